"""Image corruptions of real archives, at severities 1..5: the robustness suite's shifts and the
robust-training augmentation (`data.corruptions`).

Every corruption maps a uint8 RGB image [H, W, 3] to one of the same shape and dtype; severity 0
is the identity. Randomness comes only from the generator passed in, so a seed fixes the output.
The random pattern of an image (noise, cloud field, blur direction, sensor response) does not
depend on the severity, only its strength does: the severities of one image are nested (a thicker
cloud covers the thinner one), which keeps them ordered image by image.

albumentations draws the generic ones (noise, blur, JPEG, down-sampling);
written here is what remote sensing needs beyond them: haze (the atmospheric scattering model with
a spatially varying transmission), cloud occlusion (a fractal cloud mask covering a growing share
of the scene), an exposure shift (brightness and contrast about the scene mean) and the colour
response of another sensor (channel mixing and per-band gamma).
The suite's parameters are sized for 64-96 px tiles (a 5 px blur radius already erases a small
building at 64 px).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
from PIL import Image

from rsjax.errors import ConfigError, InputError

SEVERITIES = (1, 2, 3, 4, 5)

# Strength per severity 1..5 (index s - 1).
_HAZE_TRANSMISSION = (0.88, 0.76, 0.64, 0.52, 0.4)      # mean share of the ground signal kept
_CLOUD_COVER = (0.1, 0.2, 0.32, 0.46, 0.62)             # share of the scene under cloud
_NOISE_STD = (0.04, 0.07, 0.1, 0.14, 0.2)               # Gaussian noise std / 255
_SPECKLE = (0.15, 0.25, 0.35, 0.5, 0.7)                 # multiplicative noise in [1 - a, 1 + a]
_DEFOCUS_RADIUS = (1, 2, 3, 4, 5)                       # disc radius, pixels
_MOTION_KERNEL = (3, 5, 7, 9, 11)                       # line kernel length, pixels
_JPEG_QUALITY = (60, 40, 25, 15, 8)
_GSD_FACTOR = (1.5, 2.0, 3.0, 4.0, 6.0)                 # ground sampling distance x factor
_BRIGHTNESS = (0.04, 0.08, 0.12, 0.16, 0.2)             # shift, random sign
_CONTRAST = (0.15, 0.3, 0.45, 0.6, 0.75)               # loss of contrast
_SENSOR = (0.08, 0.16, 0.24, 0.32, 0.42)                # distance of the response from identity


def _check_image(image: np.ndarray) -> None:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise InputError(f"corruptions take uint8 RGB images [H, W, 3]; got {image.dtype} "
                     f"{list(image.shape)} (multi-band and 16-bit inputs are not supported)")


def _smooth_field(rng: np.random.Generator, height: int, width: int, grid: int) -> np.ndarray:
  """Uniform noise on a (grid + 1)^2 lattice, bicubically up-sampled to [H, W] float32."""
  lattice = rng.random((grid + 1, grid + 1), dtype=np.float32)
  return np.asarray(Image.fromarray(lattice, mode="F").resize((width, height), Image.BICUBIC))


def _fractal_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """[H, W] float32 clouds-like noise: octaves of smooth noise, halving amplitude."""
  field = np.zeros((height, width), np.float32)
  for octave, grid in enumerate((2, 4, 8, 16)):
    field += 0.5 ** octave * _smooth_field(rng, height, width, grid)
  return field


def haze(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """I = J t + A (1 - t): transmission t varies smoothly over the scene; the airlight A is a bright,
  slightly blue grey."""
  h, w, _ = image.shape
  variation = _smooth_field(rng, h, w, 3) - 0.5  # [-0.5, 0.5], the same for every severity
  airlight = rng.uniform(0.78, 0.9) * np.asarray([0.94, 0.97, 1.0], np.float32) * 255.0
  t = np.clip(_HAZE_TRANSMISSION[severity - 1] + 0.24 * variation, 0.05, 1.0)[..., None]
  out = image.astype(np.float32) * t + airlight * (1.0 - t)
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cloud(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """A fractal cloud mask covering _CLOUD_COVER of the scene, with soft edges and texture."""
  h, w, _ = image.shape
  field = _fractal_field(rng, h, w)
  order = np.sort(field.ravel())
  threshold = order[int((1.0 - _CLOUD_COVER[severity - 1]) * (order.size - 1))]
  spread = max(float(order[-1] - order[0]), 1e-6)
  alpha = np.clip((field - threshold) / (0.12 * spread), 0.0, 1.0)[..., None]
  brightness = rng.uniform(225, 250)
  texture = brightness - 25.0 * (field.max() - field)[..., None] / spread
  out = image.astype(np.float32) * (1.0 - alpha) + texture * alpha
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def sensor_shift(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Another sensor's colour response: x -> (x^gamma) M with M = I + m D and per-band gamma
  exp(m g); D (unit Frobenius norm) and g (unit norm) drawn from `rng`, m from the severity."""
  m = _SENSOR[severity - 1]
  mix = rng.standard_normal((3, 3)).astype(np.float32)
  mix /= np.linalg.norm(mix)
  gamma = rng.standard_normal(3).astype(np.float32)
  gamma /= np.linalg.norm(gamma)
  x = (image.astype(np.float32) / 255.0) ** np.exp(m * gamma)
  out = x @ (np.eye(3, dtype=np.float32) + m * mix).T
  return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def brightness_contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Contrast lowered about the image mean by _CONTRAST, brightness shifted up or down (drawn)
  by _BRIGHTNESS of the full range: an exposure / radiometric calibration shift. (Written here:
  albumentations' version scales around zero, which blackens dark RS scenes at mild settings.)"""
  x = image.astype(np.float32)
  sign = 1.0 if rng.integers(2) else -1.0
  mean = x.mean(axis=(0, 1), keepdims=True)
  out = (x - mean) * (1.0 - _CONTRAST[severity - 1]) + mean + sign * _BRIGHTNESS[severity - 1] * 255
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# The albumentations ones: severity -> transform of fixed strength; its own generator, seeded
# from ours, draws the pattern. Called with the modules, imported on first use (seconds).
_ALBUMENTATIONS = {
    "gaussian_noise": lambda A, cv2, s: A.GaussNoise(std_range=(_NOISE_STD[s - 1],) * 2, p=1.0),
    "speckle_noise": lambda A, cv2, s: A.MultiplicativeNoise(
        multiplier=(1 - _SPECKLE[s - 1], 1 + _SPECKLE[s - 1]), per_channel=False,
        elementwise=True, p=1.0),
    "defocus_blur": lambda A, cv2, s: A.Defocus(radius=(_DEFOCUS_RADIUS[s - 1],) * 2,
                                                alias_blur=(0.1, 0.1), p=1.0),
    "motion_blur": lambda A, cv2, s: A.MotionBlur(blur_limit=(_MOTION_KERNEL[s - 1],) * 2,
                                                  allow_shifted=False, p=1.0),
    "jpeg": lambda A, cv2, s: A.ImageCompression(quality_range=(_JPEG_QUALITY[s - 1],) * 2, p=1.0),
    "downsample": lambda A, cv2, s: A.Downscale(
        scale_range=(1.0 / _GSD_FACTOR[s - 1],) * 2,
        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=1.0),
}
_OWN = {"haze": haze, "cloud": cloud, "brightness_contrast": brightness_contrast,
        "sensor_shift": sensor_shift}

NAMES = ("haze", "cloud", "gaussian_noise", "speckle_noise", "defocus_blur", "motion_blur",
         "jpeg", "downsample", "brightness_contrast", "sensor_shift")

_local = threading.local()  # per-thread transforms: grain's prefetch threads share the module


def _albumentations_apply(name: str, image: np.ndarray, severity: int,
                          rng: np.random.Generator) -> np.ndarray:
  cache = _local.__dict__.setdefault("compose", {})
  compose = cache.get((name, severity))
  if compose is None:  # built once per thread: building validates every argument (slow)
    import albumentations
    import cv2

    transform = _ALBUMENTATIONS[name](albumentations, cv2, severity)
    compose = cache[(name, severity)] = albumentations.Compose([transform], p=1.0)
  compose.set_random_seed(int(rng.integers(2**31)))
  return compose(image=image)["image"]


def check_names(names, what: str = "--robustness-corruptions") -> tuple[str, ...]:
  """The names, checked: an unknown one raises InputError listing the valid ones."""
  names = tuple(names)
  unknown = [n for n in names if n not in NAMES]
  if unknown:
    raise InputError(f"{what}: unknown corruption(s) {', '.join(unknown)}; "
                     f"valid: {', '.join(NAMES)}")
  return names


def corrupt(image: np.ndarray, name: str, severity: int,
            rng: np.random.Generator) -> np.ndarray:
  """[H, W, 3] uint8 -> [H, W, 3] uint8, corruption `name` at `severity` (0: the image itself)."""
  _check_image(image)
  check_names([name], "corruption")
  if severity not in (0, *SEVERITIES):
    raise InputError(f"corruption {name}: severity must be 0..5, got {severity}")
  if severity == 0:
    return image
  if name in _OWN:
    return _OWN[name](image, severity, rng)
  return _albumentations_apply(name, image, severity, rng)


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
  """[N, H, W, 3] uint8 -> corrupted copy. Image i draws from (seed, corruption, i), not from the
  severity, so an image's pattern is the same at every severity and every call."""
  if images.ndim != 4:
    raise InputError(f"corrupt_images takes [N, H, W, 3] uint8, got {list(images.shape)}")
  if severity == 0:
    return images
  index = NAMES.index(check_names([name], "corruption")[0])
  return np.stack([corrupt(img, name, severity, np.random.default_rng([seed, index, i]))
                   for i, img in enumerate(images)]) if len(images) else images.copy()


@dataclasses.dataclass(frozen=True)
class TrainCorruptions:
  """The robust-training augmentation: with `probability`, one of `names` at a severity drawn
  uniformly from 1..max_severity. Picklable (it travels to grain's worker processes)."""
  probability: float
  max_severity: int
  names: tuple[str, ...] = NAMES

  def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8 -> same; every draw comes from `rng` (grain's per-record generator)."""
    if rng.random() >= self.probability:
      return image
    name = self.names[int(rng.integers(len(self.names)))]
    severity = int(rng.integers(1, self.max_severity + 1))
    return corrupt(image, name, severity, rng)


def from_config(data) -> TrainCorruptions | None:
  """data.corruptions -> TrainCorruptions, or None when off (probability 0, the default).

  Raises ConfigError naming the key for a probability outside [0, 1], a severity outside 1..5,
  an unknown name, or images that are not RGB (data.bands of another length)."""
  c = data.get("corruptions", None)
  if c is None or not c.get("probability", 0.0):
    return None
  p, top = float(c.probability), int(c.max_severity)
  if not 0.0 < p <= 1.0:
    raise ConfigError(f"config key 'data.corruptions.probability' must lie in [0, 1], got {p}")
  if top not in SEVERITIES:
    raise ConfigError(f"config key 'data.corruptions.max_severity' must be 1..5, got {top}")
  names = tuple(c.get("names", ())) or NAMES
  try:
    check_names(names, "config key 'data.corruptions.names'")
  except InputError as e:
    raise ConfigError(str(e)) from None
  bands = tuple(data.get("bands", ()) or ())
  if bands and len(bands) != 3:
    raise ConfigError(f"config key 'data.corruptions': the corruptions need RGB images, but "
                      f"data.bands selects {len(bands)} bands")
  return TrainCorruptions(p, top, names)

"""Min-max normalizer for actions and low-dim observations; owned by the agent and saved with it."""

import numpy as np
import torch

__all__ = ['Normalizer']


class Normalizer:
    """Maps actions and low-dim observation keys to [-1, 1] from dataset min/max statistics.

    Built from `Dataset.normalizer_stats()` = {'actions': {'min', 'max'}, '<low_dim key>': {'min', 'max'}}.
    Dimensions whose range is below `eps` are only centred (scale 1). Keys without statistics (images)
    pass through unchanged, so uint8 images stay uint8. `stats=None` gives the identity map.
    """

    def __init__(self, stats=None, eps=1e-4, device='cpu'):
        self.eps = float(eps)
        self.device = torch.device(device)
        self.stats = {}  # key -> {'min': np.ndarray, 'max': np.ndarray} (float64)
        self._offset, self._scale = {}, {}
        for key, entry in (stats or {}).items():
            if not isinstance(entry, dict) or 'min' not in entry or 'max' not in entry:
                raise ValueError(f"normalizer stats[{key!r}] must be a dict with 'min' and 'max', "
                                 f'got {entry!r}')
            lo = np.asarray(entry['min'], dtype=np.float64)
            hi = np.asarray(entry['max'], dtype=np.float64)
            if lo.shape != hi.shape:
                raise ValueError(f'normalizer stats[{key!r}]: min shape {lo.shape} != max shape {hi.shape}')
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(hi < lo):
                raise ValueError(f'normalizer stats[{key!r}]: need finite min <= max, got min={lo}, max={hi}')
            self.stats[key] = {'min': lo, 'max': hi}
            rng = hi - lo
            # near-constant dimensions are only centred (scale 1)
            scale = np.where(rng > self.eps, 2.0 / np.maximum(rng, self.eps), 1.0)
            self._offset[key] = torch.as_tensor((hi + lo) / 2.0, dtype=torch.float32, device=self.device)
            self._scale[key] = torch.as_tensor(scale, dtype=torch.float32, device=self.device)

    def normalize(self, key, x):
        """Map raw values of `key` (..., *shape) to normalized units; unknown keys pass through."""
        if key not in self.stats:
            return x
        return (x - self._offset[key].to(x.dtype)) * self._scale[key].to(x.dtype)

    def unnormalize(self, key, x):
        """Inverse of `normalize` for `key`; unknown keys pass through."""
        if key not in self.stats:
            return x
        return x / self._scale[key].to(x.dtype) + self._offset[key].to(x.dtype)

    def normalize_obs(self, obs):
        """Normalize every low-dim key of an observation dict; images (no stats) pass through."""
        return {k: self.normalize(k, v) for k, v in obs.items()}

    def state_dict(self):
        """Plain, picklable statistics (lists), enough to rebuild the normalizer."""
        stats = {k: {'min': v['min'].tolist(), 'max': v['max'].tolist()} for k, v in self.stats.items()}
        return {'eps': self.eps, 'stats': stats}

    @classmethod
    def from_state_dict(cls, state, device='cpu'):
        """Rebuild a normalizer saved with `state_dict()`."""
        return cls(state['stats'], eps=state['eps'], device=device)

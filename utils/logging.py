"""Run logging: csv files in the run directory, the same metrics to wandb, rollout videos as mp4."""

import csv
import os


class CsvLogger:
    """Appends rows of scalars to a csv file; the first row fixes the columns (kept on resume)."""

    def __init__(self, path):
        self.path = path
        self.fields = None
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline='') as f:
                self.fields = next(csv.reader(f))

    def log(self, row):
        """Write one row (dict of scalars); keys unseen in the header are refused, missing ones left empty."""
        row = {k: _scalar(v) for k, v in row.items()}
        new_file = self.fields is None
        if new_file:
            self.fields = list(row)
        unknown = set(row) - set(self.fields)
        if unknown:
            raise ValueError(f'{self.path}: columns {sorted(unknown)} are not in the header {self.fields}')
        with open(self.path, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def _scalar(value):
    """Plain Python number from a numpy / torch scalar."""
    return value.item() if hasattr(value, 'item') else value


def write_video(path, frames, fps=20):
    """Write (T, H, W, 3) uint8 frames to an mp4 file."""
    import imageio

    imageio.mimwrite(path, list(frames), fps=fps, macro_block_size=1)
    return path


class WandbLogger:
    """Thin wandb wrapper; mode 'disabled' makes every call a no-op without importing wandb."""

    def __init__(self, project, mode, run_dir, config, group=None, name=None, resume_id=None):
        if mode not in ('online', 'offline', 'disabled'):
            raise ValueError(f"--wandb_mode must be 'online', 'offline' or 'disabled', got {mode!r}")
        self.run = None
        self.id = resume_id
        if mode == 'disabled':
            return
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=project, mode=mode, dir=run_dir, config=config, group=group, name=name,
                              id=resume_id, resume='allow' if resume_id else None)
        self.id = self.run.id

    def log(self, metrics, step):
        """Log a dict of scalars at `step`."""
        if self.run is not None:
            self.run.log({k: _scalar(v) for k, v in metrics.items()}, step=step)

    def log_videos(self, key, paths, step):
        """Log mp4 files already written to disk."""
        if self.run is not None and paths:
            self.run.log({key: [self._wandb.Video(p, format='mp4') for p in paths]}, step=step)

    def finish(self):
        """Close the run."""
        if self.run is not None:
            self.run.finish()

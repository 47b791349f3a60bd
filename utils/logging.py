"""Run logging: csv files in the run directory, the same metrics to wandb, rollout videos as mp4."""

import csv
import os


class CsvLogger:
    """Appends rows of scalars to a csv file; each key (e.g. the step) is written once.

    On an existing file (a resumed run) the header is kept, a row whose `key` columns are not past the last
    row's is skipped (an exactly resumed run replays the steps since its checkpoint, and must not log them
    twice), and a row with columns the header lacks extends the header (the file is rewritten atomically
    with the old rows kept), so run directories written before a new column still resume.
    """

    def __init__(self, path, key=('step',)):
        self.path = path
        self.key = tuple(key)
        self.fields = None
        self.last_key = None
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline='') as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                for row in reader:
                    self.last_key = self._key(row, self.last_key)

    def _key(self, row, default=None):
        """The row's key as a tuple of floats (None if the file has no such columns)."""
        try:
            return tuple(float(row[k]) for k in self.key)
        except (KeyError, TypeError, ValueError):
            return default

    def log(self, row):
        """Write one row (dict of scalars); missing columns are left empty. Returns False if skipped."""
        row = {k: _scalar(v) for k, v in row.items()}
        key = self._key(row)
        if key is not None and self.last_key is not None and key <= self.last_key:
            return False
        new_file = self.fields is None
        if new_file:
            self.fields = list(row)
        unknown = [k for k in row if k not in self.fields]
        if unknown:
            self._extend_header(unknown)
        with open(self.path, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if key is not None:
            self.last_key = key
        return True

    def _extend_header(self, columns):
        """Rewrite the file with `columns` appended to the header (old rows keep their values)."""
        with open(self.path, newline='') as f:
            rows = list(csv.DictReader(f))
        self.fields = self.fields + list(columns)
        tmp = f'{self.path}.tmp-{os.getpid()}'
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


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

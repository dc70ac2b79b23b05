"""Rerun policy of the synthetic writers, based on a manifest written next to the tables.

The manifest records the generation arguments, the status ('writing' or 'complete') and every file the run
writes (paths relative to the dataroot). On a rerun:
  * same arguments, status 'complete', no `overwrite`  -> skip (nothing is touched);
  * otherwise -> delete exactly the files the previous manifest lists, then write everything again.
A folder that already holds dataset tables but no manifest is not ours (e.g. a real nuScenes download): we
refuse to write into it. Writing the manifest first with status 'writing' (and the full planned file list) means
an interrupted run is cleaned up by the next one.
"""
import json
import os
from pathlib import Path

from ...utils.file_utils import atomic_save_text


def read_manifest(manifest_path):
    """The manifest dict, or None when there is none."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        return None
    return json.loads(manifest_path.read_text())


def prepare_output(dataroot, manifest_path, arguments, overwrite, foreign_marker_glob, generator=None):
    """Decide whether to write, cleaning up a previous synthetic run when needed.

    Args:
        dataroot: folder all manifest paths are relative to.
        manifest_path: where the manifest lives.
        arguments: JSON-able dict of generation arguments (what makes two runs identical).
        overwrite: regenerate even when an identical complete dataset exists.
        foreign_marker_glob: glob (relative to the manifest's folder) whose matches, without a manifest, mean
            the folder holds a dataset we did not write.
        generator: when given, a complete dataset only counts as identical if its manifest names this generator
            (a new generator version writes other files for the same arguments).
    Returns:
        True to generate, False to skip (an identical complete dataset is already there).
    Raises:
        FileExistsError when the folder holds a dataset that was not written by the synthetic generator.
    """
    dataroot, manifest_path = Path(dataroot), Path(manifest_path)
    manifest = read_manifest(manifest_path)
    if manifest is None:
        foreign = sorted(manifest_path.parent.glob(foreign_marker_glob)) if manifest_path.parent.is_dir() else []
        if foreign:
            raise FileExistsError(
                f'{manifest_path.parent} already holds dataset tables ({foreign[0].name}, ...) that were not written '
                f'by the synthetic generator (no {manifest_path.name}); choose another --root or remove them')
        return True
    same_generator = generator is None or manifest.get('generator') == generator
    if manifest.get('status') == 'complete' and manifest.get('arguments') == arguments and same_generator \
            and not overwrite:
        return False
    remove_listed_files(dataroot, manifest.get('files', []))
    return True


def remove_listed_files(dataroot, relative_paths):
    """Delete the listed files under `dataroot`, then the folders they leave empty (missing files are fine;
    nothing outside `dataroot` is touched)."""
    dataroot = Path(dataroot).resolve()
    folders = set()
    for relative in relative_paths:
        path = (dataroot / relative).resolve()
        if dataroot not in path.parents:
            raise ValueError(f'manifest entry {relative!r} points outside {dataroot}')
        path.unlink(missing_ok=True)
        folders.update(parent for parent in path.parents if dataroot in parent.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_manifest(manifest_path, generator, arguments, files, status):
    """Write the manifest atomically. `files` are dataroot-relative paths.

    Bulk scan files are written without fsync (`durable=False`), so before declaring the dataset 'complete' all
    dirty data is flushed: after a power loss the manifest never claims files that did not reach the disk."""
    if status == 'complete':
        os.sync()
    manifest = {'generator': generator, 'status': status, 'arguments': arguments, 'files': sorted(files)}
    atomic_save_text(json.dumps(manifest, indent=1) + '\n', manifest_path)

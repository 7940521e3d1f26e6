"""Download the pre-tokenized FineWeb shards the record trains on (see data/README.md)."""

import argparse
import sys
import textwrap
from pathlib import Path

from shards import ShardError, read_shard_header

REPO_ID = "kjj0/fineweb10B-gpt2"
VAL_FILE = "fineweb_val_000000.bin"
TOTAL_TRAIN_SHARDS = 103
SHARD_TOKENS = 100_000_000
# The record: 5590 steps of 524,288 tokens. The loader drops the tail of each shard that does not
# fill a step, so a shard gives 100,000,000 // 524,288 = 190 steps and 30 shards cover 5590 steps.
RECORD_STEPS = 5590
TOKENS_PER_STEP = 524_288
STEPS_PER_SHARD = SHARD_TOKENS // TOKENS_PER_STEP
DEFAULT_TRAIN_SHARDS = -(-RECORD_STEPS // STEPS_PER_SHARD)
DEFAULT_DIR = Path(__file__).resolve().parent / "fineweb10B"
# Seconds to wait for the Hub's answer before reporting it unreachable.
HUB_TIMEOUT_S = 10

HELP = textwrap.fill(
    f"""\
N is how many train shards to fetch (default {DEFAULT_TRAIN_SHARDS}, at most {TOTAL_TRAIN_SHARDS}), besides the
val shard. Each shard holds {SHARD_TOKENS:,} GPT-2 tokens (~200 MB). train_gpt.py's loader uses a shard in
whole steps of {TOKENS_PER_STEP:,} tokens, so one shard gives {STEPS_PER_SHARD} steps; the record's
{RECORD_STEPS} steps ({RECORD_STEPS * TOKENS_PER_STEP / 1e9:.2f}B tokens) need {DEFAULT_TRAIN_SHARDS} shards,
and all {TOTAL_TRAIN_SHARDS} ({TOTAL_TRAIN_SHARDS * SHARD_TOKENS / 1e9:.1f}B tokens) are enough for
{TOTAL_TRAIN_SHARDS * STEPS_PER_SHARD:,} steps. Shards already present and intact are skipped; a corrupt or
truncated one is downloaded again. The Hub endpoint is $HF_ENDPOINT (default https://huggingface.co).
""",
    width=88,
)


class DownloadError(Exception):
    """A download that cannot proceed; the message says what failed and what to do."""


def shard_count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"N must be a whole number of train shards, got {text!r}") from None
    if not 0 <= value <= TOTAL_TRAIN_SHARDS:
        raise argparse.ArgumentTypeError(f"N must be between 0 and {TOTAL_TRAIN_SHARDS} (the whole set), got {value}")
    return value


def wanted_files(n):
    return [VAL_FILE] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n + 1)]


def check_present(folder, names):
    """Names still to download: missing, or present but not an intact shard (those are deleted)."""
    missing = []
    for name in names:
        path = folder / name
        if not path.exists():
            missing.append(name)
            continue
        try:
            read_shard_header(path)
        except ShardError as e:
            print(f"replacing {name}: {e}", flush=True)
            path.unlink()
            missing.append(name)
    return missing


def _hub_failure(name, error):
    """Turn a huggingface_hub exception into a DownloadError with the fix."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{name} from dataset {REPO_ID} at {constants.ENDPOINT}"
    if isinstance(error, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return DownloadError(
            f"Cannot download {where}: HF_HUB_OFFLINE is set, so huggingface_hub makes no network requests. "
            "Unset HF_HUB_OFFLINE and run this again, or copy the shards into the folder by hand."
        )
    # LocalEntryNotFoundError (the Hub could not be asked) subclasses EntryNotFoundError (the Hub said no).
    if isinstance(error, EntryNotFoundError) and not isinstance(error, LocalEntryNotFoundError):
        return DownloadError(
            f"{where} was not found (the repository has {VAL_FILE} and train shards 1 to {TOTAL_TRAIN_SHARDS}). "
            "Check N and HF_ENDPOINT, or download what exists with a smaller N."
        )
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return DownloadError(
            f"Cannot download {where}: the Hub says the repository does not exist or is not accessible ({error}). "
            "Check that HF_ENDPOINT points at the Hugging Face Hub or a mirror of it."
        )
    if isinstance(error, HfHubHTTPError):
        return DownloadError(
            f"Downloading {where} failed: {error}. Try again later, or check HF_ENDPOINT and your token."
        )
    if isinstance(error, OSError) and not isinstance(error, (LocalEntryNotFoundError, ConnectionError)):
        return DownloadError(
            f"Downloading {where} failed while writing or checking the file ({error}). Check the free disk space "
            "and permissions of the folder, then run this again: finished shards are kept."
        )
    return DownloadError(
        f"Cannot reach the Hub to download {where} ({type(error).__name__}: {error}). Check your network connection, "
        "proxy and HF_ENDPOINT, then run this again: shards already downloaded are kept."
    )


def download(folder, names):
    """Download `names` into `folder`, checking each shard once it has arrived."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:
        raise DownloadError(
            "huggingface_hub is not installed; run `pip install huggingface_hub` (it is in requirements.txt)."
        ) from None

    # One quick request first: when the Hub is unreachable, huggingface_hub would retry every file for
    # about half a minute before failing; this reports it at once.
    try:
        get_hf_file_metadata(hf_hub_url(REPO_ID, names[0], repo_type="dataset"), timeout=HUB_TIMEOUT_S)
    except Exception as e:  # every failure here ends the run, each with its own advice
        raise _hub_failure(names[0], e) from None

    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] downloading {name}", flush=True)
        try:
            path = hf_hub_download(REPO_ID, name, repo_type="dataset", local_dir=folder, etag_timeout=HUB_TIMEOUT_S)
        except Exception as e:  # as above
            raise _hub_failure(name, e) from None
        try:
            read_shard_header(path)
        except ShardError as e:
            Path(path).unlink()
            raise DownloadError(f"The downloaded {name} is not an intact shard, so it was deleted: {e}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=f"Download {VAL_FILE} and the first N train shards of the Hub dataset {REPO_ID}.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "N",
        nargs="?",
        type=shard_count,
        default=DEFAULT_TRAIN_SHARDS,
        help=f"train shards to download (default {DEFAULT_TRAIN_SHARDS})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"download folder (default: {DEFAULT_DIR}, where train_gpt.py looks)",
    )
    args = parser.parse_args(argv)

    names = wanted_files(args.N)
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(
            f"error: cannot use --dir {args.dir} as the download folder ({e}); choose another folder.", file=sys.stderr
        )
        return 1
    todo = check_present(args.dir, names)
    print(f"{len(names) - len(todo)} of {len(names)} shards already present and intact in {args.dir}", flush=True)
    if todo:
        try:
            download(args.dir, todo)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"done: {len(names)} shards ({VAL_FILE} + {args.N} train) in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

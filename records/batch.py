"""A record attempt's whole batch in one command: a pre-registered sequential plan, the attempt's runs (and
the previous record's, alternating) on one node or through SLURM, a decision at every look, and a restart
that continues where the batch stopped.

    python records/batch.py records/NAME [--baseline PREVIOUS/train_gpt.py] -- --checkpoint_every=500
    python records/batch.py records/NAME --plan-only --pilot records/PILOT
    python records/batch.py records/NAME --slurm --partition=gpu --account=me --time-min=60 --nodes-at-once=8 \\
        -- --checkpoint_every=500

Options after `--` go to every run of train_gpt.py (they must include --checkpoint_every, so that an
interrupted or preempted run resumes). See records/README.md ("Sequential batches") for the statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `records` and `speedrun` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from records import batch_evidence as be  # noqa: E402
from records.batch_evidence import BatchError  # noqa: E402
from speedrun.files import write_atomically  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = dict(
    target=2.92, alpha=0.01, first_look=10, look_every=5, max_runs=50, futility=0.05, futility_from=2, nproc=1
)
# train_gpt.py's exit statuses (its CLI contract)
# (0 finished and 3 diverged are read from the run's summary instead)
EXIT_USER, EXIT_INTERRUPTED = 2, (130, 143)
RESERVED = ("--records_dir", "--record", "--resume")  # the batch sets these per run
JOBS_FILE = "jobs.jsonl"  # the jobs submitted (run, job id, kind), so that a restart does not submit them again
CRASH_FILE = "crashed.json"  # written beside a run that ended with an unexpected exit status
PLAN_SIMULATIONS = 20_000  # batches simulated for --plan-only's expectations
POLL_S = 2.0
DEFAULT_STD = 0.0008  # --plan-only: the medium track's run-to-run std of the final val loss (record 14: 0.000798)
SLURM_OPTIONS = ("partition", "account", "time_min", "nodes_at_once")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- the plan


def _script(path: str, option: str) -> dict:
    p = Path(path).resolve()
    if not p.is_file():
        raise BatchError(f"{option} {path}: no such file. Give the training script to run (e.g. train_gpt.py).")
    return {"path": str(p), "sha256": sha256(p)}


def _looks(args) -> list[int]:
    if args.first_look < 2 or args.look_every < 1 or args.max_runs < args.first_look:
        raise BatchError(
            f"--first-look {args.first_look}, --look-every {args.look_every}, --max-runs {args.max_runs}: expected "
            "a first look of at least 2 runs (a t-test needs 2), a positive interval and a maximum not below the "
            "first look."
        )
    looks = list(range(args.first_look, args.max_runs + 1, args.look_every))
    if looks[-1] != args.max_runs:
        looks.append(args.max_runs)
    return looks


def build_plan(args, options: list[str]) -> dict:
    looks = _looks(args)
    if not 0 < args.alpha < 0.5 or not 0 <= args.futility < 1:
        raise BatchError(
            f"--alpha {args.alpha} / --futility {args.futility}: expected 0 < alpha < 0.5, 0 <= futility < 1."
        )
    from records import sequential  # here, not at the top: see records/batch_evidence.py

    design = sequential.Design(tuple(looks), args.alpha, args.target, args.futility, args.futility_from)
    baseline = _script(args.baseline, "--baseline") if args.baseline else None
    return {
        "format": be.PLAN_FORMAT,
        "target": args.target,
        "alpha": args.alpha,
        "sided": "one-sided: mean final val loss below the target",
        "max_runs": looks[-1],
        "looks": looks,
        "efficacy": {
            "spending": "Lan-DeMets O'Brien-Fleming, alpha(t) = 2 (1 - Phi(z_(1-alpha/2) / sqrt(t))), t = n / max_runs",
            "alpha_spent_cumulative": design.spending().tolist(),
            "z_boundaries": design.z_boundaries().tolist(),
            "nominal_p": design.nominal_p().tolist(),
            "t_boundaries": design.t_boundaries().tolist(),
            "applied_to": "each look's one-sample t-statistic at the z boundary's nominal level (n - 1 df)",
        },
        "futility": {
            "rule": "stop when the conditional power of the planned maximum under the current mean and std is below",
            "conditional_power_below": args.futility,
            "from_look": args.futility_from,
            "binding": False,
        },
        "p_value": "stagewise ordering",
        "script": _script(args.script, "--script"),
        "options": options,
        "nproc_per_node": args.nproc,
        "baseline": baseline,
        "alternation": "ABAB: attempt run i, then baseline run i" if baseline else "attempt runs only",
        "layout": "attempt/A001, attempt/A002, ... (and baseline/B001, ...): one run per index",
    }


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: the folder's plan has {json.dumps(a)}, this command {json.dumps(b)}")
    return out


def _check_options(options: list[str]) -> None:
    for opt in options:
        if not opt.startswith("--") or "=" not in opt:
            raise BatchError(
                f"training option {opt!r}: expected --name=value (train_gpt.py's form) after `--`, e.g. "
                "-- --checkpoint_every=500."
            )
        if opt.split("=", 1)[0] in RESERVED:
            raise BatchError(
                f"training option {opt}: the batch sets --records_dir, --record and --resume for each run itself "
                "(the run's folder is its index). Leave them out."
            )
    every = [o.split("=", 1)[1] for o in options if o.startswith("--checkpoint_every=")]
    if not every or not every[-1].isdigit() or int(every[-1]) < 1:
        raise BatchError(
            "the training options have no checkpoint interval: a batch resumes interrupted or preempted runs "
            "from their checkpoint, so give one after `--`, e.g. -- --checkpoint_every=500 (steps; the record "
            "runs 5590). Nothing was run."
        )


def settle_plan(batch: Path, args, options: list[str], write: bool) -> dict:
    """The plan of this command, checked against the folder's plan.json (written here when new and
    `write`). Options not given on the command line take the folder's plan's values."""
    old = be.read_plan(batch)
    if old is not None:
        given = vars(args)
        for key, plan_key in (("target", "target"), ("alpha", "alpha"), ("nproc", "nproc_per_node")):
            if given[key] is None:
                given[key] = old[plan_key]
        if args.max_runs is None and args.first_look is None and args.look_every is None:
            looks = old["looks"]
            args.first_look, args.max_runs = looks[0], looks[-1]
            args.look_every = looks[1] - looks[0] if len(looks) > 1 else 1
        if args.futility is None:
            args.futility = old["futility"]["conditional_power_below"]
        if args.futility_from is None:
            args.futility_from = old["futility"]["from_look"]
        if args.baseline is None and old.get("baseline"):
            args.baseline = old["baseline"]["path"]
        if args.script is None:
            args.script = old["script"]["path"]
        if not options:
            options = old["options"]
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.script is None:
        args.script = str(REPO / "train_gpt.py")
    plan = build_plan(args, options)
    if old is not None:
        diff = differences({k: v for k, v in old.items() if k != "created"}, plan)
        if diff:
            raise BatchError(
                f"{batch / be.PLAN_FILE} was written before the batch's first run and is never rewritten; this "
                f"command contradicts it: {'; '.join(diff)}. Run the batch with its plan (give no options but the "
                "folder to continue it), or start a new batch in another folder. Nothing was run."
            )
        return old
    if write:
        batch.mkdir(parents=True, exist_ok=True)
        plan["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_atomically(batch / be.PLAN_FILE, json.dumps(plan, indent=2) + "\n")
    return plan


def plan_text(plan: dict, scenarios: list[tuple[str, float, float]], minutes: float | None, seed: int) -> str:
    from records import sequential

    design = be.design_of(plan)
    lines = [json.dumps(plan, indent=2), ""]
    lines.append("look  runs  t boundary  nominal p   alpha spent")
    for k, n in enumerate(design.looks):
        lines.append(
            f"{k + 1:>4}  {n:>4}  {design.t_boundaries()[k]:>10.3f}  {design.nominal_p()[k]:.2e}  "
            f"{design.spending()[k]:.2e}"
        )
    per_run = 2 if plan.get("baseline") else 1
    for label, mean, std in scenarios:
        sim = sequential.simulate(design, mean, std, PLAN_SIMULATIONS, seed)
        line = (
            f"{label} (mean {mean:.6f}, std {std:.6f}): pass probability {sim.passed:.3f}, expected attempt runs "
            f"{sim.mean_runs:.1f}"
        )
        if minutes is not None:
            hours = sim.mean_runs * per_run * minutes / 60 * max(plan["nproc_per_node"], 1)
            line += f", about {hours:.1f} GPU-hours ({per_run} run(s) per index, {minutes:.2f} min per run)"
        lines.append(line)
    lines.append(f"({PLAN_SIMULATIONS} simulated batches each, seed {seed}; futility applied)")
    return "\n".join(lines) + "\n"


def pilot_figures(folder: str) -> tuple[float, float, float]:
    """Mean, std of the final val loss and mean train minutes of a pilot folder's finished runs."""
    losses, minutes = [], []
    for path in sorted(Path(folder).rglob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("status") == "finished":
                losses.append(float(data["final_val_loss"]))
                minutes.append(float(data["train_time_ms"]) / 60_000)
    if len(losses) < 2:
        raise BatchError(
            f"--pilot {folder}: found {len(losses)} finished run summaries; the expectations need at least 2 "
            "(or give --mean, --std and --minutes-per-run)."
        )
    return float(np.mean(losses)), float(np.std(losses, ddof=1)), float(np.mean(minutes))


# ------------------------------------------------------------------------------------------- the runs


def run_command(plan: dict, batch: Path, arm: str, index: int, resume: Path | None) -> list[str]:
    script = plan["script"]["path"] if arm == "A" else plan["baseline"]["path"]
    folder = be.run_dir(batch, arm, index)
    if plan["nproc_per_node"] > 1:
        nproc = f"--nproc_per_node={plan['nproc_per_node']}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", nproc, script]  # torchrun
    else:
        launcher = [sys.executable, script]
    extra = [f"--records_dir={folder.parent}", f"--record={folder.name}"]
    return launcher + list(plan["options"]) + extra + ([f"--resume={resume}"] if resume else [])


def note_crash(batch: Path, arm: str, index: int, code: int) -> None:
    """A run that ended with an unexpected exit status counts as failed (its summary may say "running")."""
    folder = be.run_dir(batch, arm, index)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(
        folder / CRASH_FILE,
        json.dumps({"format": "speedrun-batch-crash/1", "status": "failed", "exit_code": code}) + "\n",
    )


def state(batch: Path, arm: str, index: int) -> be.RunState:
    s = be.run_state(batch, arm, index)
    if s.status in ("missing", "resumable") and (be.run_dir(batch, arm, index) / CRASH_FILE).is_file():
        return be.RunState(s.name, "failed", be.run_dir(batch, arm, index) / CRASH_FILE)
    return s


def after_run(batch: Path, arm: str, index: int, code: int) -> str:
    """The run's outcome from its exit status and its folder: finished, diverged, failed, interrupted."""
    s = state(batch, arm, index)
    if code in EXIT_INTERRUPTED:
        return "interrupted"
    if code == EXIT_USER and s.status != "finished":
        raise BatchError(
            f"train_gpt.py refused the options of run {s.name} (exit status 2; its message is above). Fix the "
            f"training options; the plan keeps them, so start a new batch folder."
        )
    if s.status in ("finished",) + be.FAILED:
        return s.status
    note_crash(batch, arm, index, code)
    return "failed"


def append_line(path: Path, entry: dict) -> None:
    """Append one JSON line and sync it (decisions.jsonl, jobs.jsonl): a restart reads what was decided."""
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_decision(batch: Path, entry: dict) -> None:
    append_line(batch / be.DECISIONS_FILE, entry)


def advance_looks(batch: Path, plan: dict) -> dict | None:
    """Make every look whose runs have ended and that decisions.jsonl lacks; the deciding entry once there is
    one (from the file when an earlier invocation decided)."""
    done = be.read_decisions(batch)
    looks = [d for d in done if d.get("kind") == "look"]
    for d in looks:
        if d["decision"] != "continue":
            return d
    for k in range(len(looks), len(plan["looks"])):
        entry = be.evaluate_look(batch, plan, k)
        if entry is None:
            return None
        append_decision(batch, entry)
        print(be.describe_look(entry, plan), flush=True)
        if entry["decision"] != "continue":
            return entry
    return None


def finish(batch: Path, plan: dict, deciding: dict) -> int:
    """Write (once) and print the batch's result; 0 when it passed."""
    done = be.read_decisions(batch)
    result = next((d for d in done if d.get("kind") == "result"), None)
    if result is None:
        later = [
            f"{s.name}: {s.status}" + (f", final val loss {s.final_val_loss:.6f}" if s.final_val_loss else "")
            for i in range(deciding["n"] + 1, plan["max_runs"] + 1)
            if (s := state(batch, "A", i)).status != "missing"
        ]
        result = {
            "kind": "result",
            "look": deciding["look"],
            "decision": deciding["decision"],
            "result": be.result_sentence(deciding, plan),
            "p_value": deciding.get("p_value"),
            "timing_test": be.welch_faster(batch, plan),
            "runs_after_decision": later,
        }
        append_decision(batch, result)
    print(f"result: {result['result']}")
    if result["runs_after_decision"]:
        print("runs that ended after the decision (reported, not counted): " + "; ".join(result["runs_after_decision"]))
    test = result["timing_test"]
    if test and test.get("p") is not None:
        print(
            f"timing (Welch, attempt faster than baseline): {test['attempt_mean_min']:.4f} vs "
            f"{test['baseline_mean_min']:.4f} min, t = {test['t']:.3f}, p = {test['p']:.3g}"
        )
    print(
        f"evidence: python records/evidence.py {batch / 'attempt'}"
        + (f" --baseline {batch / 'baseline'}" if plan.get("baseline") else "")
    )
    return 0 if result["decision"] == "passed" else 1


class Stopper:
    """Ctrl-C once: stop after the current run. Twice, or SIGTERM: pass the signal to the run, whose own
    handler writes its status and a checkpoint, and stop."""

    def __init__(self):
        self.stop = False
        self.child: subprocess.Popen | None = None

    def __enter__(self):
        self.old = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)

    def handle(self, signum, frame):
        running = self.child is not None and self.child.poll() is None
        if signum == signal.SIGINT and not self.stop and running:
            self.stop = True
            print("\nCtrl-C: the batch stops after the current run (Ctrl-C again interrupts the run now).", flush=True)
            return
        self.stop = True
        if running:
            self.child.send_signal(signum)


def run_local(batch: Path, plan: dict) -> int:
    arms = ("A", "B") if plan.get("baseline") else ("A",)
    with Stopper() as stopper:
        for index in range(1, plan["max_runs"] + 1):
            for arm in arms:
                deciding = advance_looks(batch, plan)
                if deciding is not None:
                    return finish(batch, plan, deciding)
                s = state(batch, arm, index)
                if s.status in ("finished",) + be.FAILED:
                    continue
                if stopper.stop:
                    print("stopped; run the same command again to continue the batch.")
                    return 130
                cmd = run_command(plan, batch, arm, index, s.resume)
                print(
                    f"run {s.name}" + (f" (resuming {s.resume.name})" if s.resume else "") + ": " + " ".join(cmd),
                    flush=True,
                )
                stopper.child = subprocess.Popen(cmd, start_new_session=True)
                code = stopper.child.wait()
                stopper.child = None
                outcome = after_run(batch, arm, index, code)
                print(f"run {s.name}: {outcome} (exit status {code})", flush=True)
                if outcome == "interrupted":
                    print("interrupted; run the same command again to resume the run from its checkpoint.")
                    return 130
        deciding = advance_looks(batch, plan)
    return finish(batch, plan, deciding)


# ------------------------------------------------------------------------------------- SLURM / submitit


class RunJob:
    """One run on one node as a submitit job. Preempted or timed out, submitit calls checkpoint(): the run
    gets SIGTERM (it checkpoints and stops) and the same job is requeued, which resumes the run from its
    checkpoint."""

    STOP_WAIT_S = 60  # how long a preempted run may take to write its checkpoint

    def __init__(self, batch: str, arm: str, index: int):
        self.batch, self.arm, self.index = batch, arm, index
        self._child: subprocess.Popen | None = None

    def __getstate__(self):
        return {"batch": self.batch, "arm": self.arm, "index": self.index}

    def __setstate__(self, state):
        self.__dict__.update(state, _child=None)

    def __call__(self) -> int:
        batch = Path(self.batch)
        plan = be.read_plan(batch)
        s = state(batch, self.arm, self.index)
        if s.status in ("finished",) + be.FAILED:
            return 0
        self._child = subprocess.Popen(run_command(plan, batch, self.arm, self.index, s.resume))
        code = self._child.wait()
        if code not in (EXIT_USER,) + EXIT_INTERRUPTED and state(batch, self.arm, self.index).status not in (
            ("finished",) + be.FAILED
        ):
            note_crash(batch, self.arm, self.index, code)
        return code

    def checkpoint(self):
        import submitit

        if self._child is not None and self._child.returncode is None:
            self._child.send_signal(signal.SIGTERM)
            # Called from submitit's signal handler while __call__ waits on the run: Popen.wait would wait for
            # that outer wait's lock, so the run is reaped here directly.
            deadline = time.monotonic() + self.STOP_WAIT_S
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(self._child.pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
        return submitit.helpers.DelayedSubmission(RunJob(self.batch, self.arm, self.index))


class EarlierJob:
    """A job that an earlier invocation of the batch submitted (jobs.jsonl) and that may still run: a SLURM job
    by its id, a local one by its controller's process id."""

    def __init__(self, record: dict, batch: Path):
        self.job_id, self.kind, self.batch = str(record["job_id"]), record["kind"], batch
        self.state = "UNKNOWN"

    def done(self) -> bool:
        if self.kind == "slurm":
            import submitit

            return submitit.SlurmJob(folder=self.batch / "jobs" / "%j", job_id=self.job_id).done()
        try:
            os.kill(int(self.job_id), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return True  # not a process of ours
        return False

    def result(self) -> None:
        return None

    def wait(self) -> None:
        while not self.done():
            time.sleep(POLL_S)


def earlier_jobs(batch: Path) -> dict:
    """The last job submitted for each run by an earlier invocation, for runs that have not ended."""
    path = batch / JOBS_FILE
    found = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            found[(record["run"][0], int(record["run"][1:]))] = record
    return {
        key: EarlierJob(record, batch)
        for key, record in found.items()
        if state(batch, *key).status in ("missing", "resumable")
    }


def run_jobs(batch: Path, plan: dict, executor, at_once: int, poll_s: float = POLL_S) -> int:
    """Runs as jobs, at most `at_once` at a time, in index order (A1, B1, A2, ...). A look uses the attempt
    runs by index, whenever they end; jobs running when the batch decides finish and are reported. Jobs
    an earlier invocation submitted (jobs.jsonl) are waited for, not submitted again."""
    order = [
        (arm, i) for i in range(1, plan["max_runs"] + 1) for arm in (("A", "B") if plan.get("baseline") else ("A",))
    ]
    kind = "local" if "Local" in type(executor).__name__ else "slurm"
    jobs: dict = earlier_jobs(batch)
    while True:
        deciding = advance_looks(batch, plan)
        active = [key for key, job in jobs.items() if not job.done()]
        for key, job in jobs.items():
            if job.done() and job.state != "FAILED" and _job_code(job) == EXIT_USER:
                raise BatchError(
                    f"train_gpt.py refused the options of run {key[0]}{key[1]:03d} (exit status 2; see "
                    f"{job.paths.stderr}). Fix the training options in a new batch folder."
                )
        if deciding is not None:
            for key in active:
                jobs[key].wait()
            return finish(batch, plan, deciding)
        pending = [k for k in order if state(batch, *k).status in ("missing", "resumable")]
        for key in pending:
            if len(active) >= at_once:
                break
            if key in active:
                continue
            jobs[key] = executor.submit(RunJob(str(batch), *key))
            active.append(key)
            name = f"{key[0]}{key[1]:03d}"
            append_line(batch / JOBS_FILE, {"run": name, "job_id": str(jobs[key].job_id), "kind": kind})
            print(f"submitted {name} as job {jobs[key].job_id}", flush=True)
        if not active and not pending:
            deciding = advance_looks(batch, plan)
            return finish(batch, plan, deciding)
        time.sleep(poll_s)


def _job_code(job) -> int | None:
    """A finished job's return value (the run's exit status), None when the job itself failed."""
    try:
        return job.result()
    except Exception:  # submitit re-raises the job's own error: the run's state on disk decides instead
        return None


def make_executor(batch: Path, args):
    import submitit

    if args.local_workers:
        executor = submitit.LocalExecutor(folder=batch / "jobs" / "%j")
        executor.update_parameters(timeout_min=args.time_min or 60)
        return executor
    executor = submitit.SlurmExecutor(folder=batch / "jobs" / "%j", max_num_timeout=10)
    executor.update_parameters(
        partition=args.partition,
        account=args.account,
        time=args.time_min,
        nodes=1,
        ntasks_per_node=1,
        gpus_per_node=args.nproc,
        signal_delay_s=120,
    )
    return executor


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    options: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, options = argv[:at], argv[at + 1 :]
    p = argparse.ArgumentParser(
        prog="records/batch.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("folder", type=Path, help="the batch folder (plan.json, decisions.jsonl, attempt/, baseline/)")
    p.add_argument("--script", help="the attempt's training script (default: train_gpt.py of this repository)")
    p.add_argument("--baseline", metavar="SCRIPT", help="the previous record's script: its runs alternate (ABAB)")
    p.add_argument("--nproc", type=int, help="processes per node: torchrun --nproc_per_node (1: one process)")
    p.add_argument("--target", type=float, help="val loss to beat (default 2.92)")
    p.add_argument("--alpha", type=float, help="one-sided alpha of the whole batch (default 0.01)")
    p.add_argument("--first-look", type=int, help="attempt runs at the first look (default 10)")
    p.add_argument("--look-every", type=int, help="attempt runs between looks (default 5)")
    p.add_argument("--max-runs", type=int, help="planned maximum of attempt runs, the last look (default 50)")
    p.add_argument("--futility", type=float, help="stop when conditional power is below this (default 0.05; 0: off)")
    p.add_argument("--futility-from", type=int, help="first look (1-based) with the futility rule (default 2)")
    p.add_argument("--plan-only", action="store_true", help="print the plan and its expectations; run nothing")
    p.add_argument("--pilot", metavar="FOLDER", help="--plan-only: mean, std and time per run from these runs")
    p.add_argument("--mean", type=float, help="--plan-only: the attempt's expected mean final val loss")
    p.add_argument("--std", type=float, help="--plan-only: its run-to-run std (default 0.0008)")
    p.add_argument("--minutes-per-run", type=float, help="--plan-only: minutes per run for GPU-hours")
    p.add_argument("--seed", type=int, default=0, help="--plan-only: seed of the simulation")
    p.add_argument("--slurm", action="store_true", help="submit each run as a SLURM job through submitit")
    p.add_argument("--partition", help="--slurm: partition")
    p.add_argument("--account", help="--slurm: account")
    p.add_argument("--time-min", type=int, help="--slurm: time limit of a job in minutes")
    p.add_argument("--nodes-at-once", type=int, help="--slurm: jobs running at the same time (default 1)")
    p.add_argument("--local-workers", type=int, help="the --slurm scheduling with submitit's local executor")
    return p.parse_args(argv), options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(sys.argv[1:] if argv is None else argv)
    batch = args.folder
    try:
        given = [f"--{o.replace('_', '-')}" for o in SLURM_OPTIONS if getattr(args, o) is not None]
        if given and not args.slurm:
            raise BatchError(
                f"{', '.join(given)} set up SLURM jobs and need --slurm (this command runs on this node). Add "
                "--slurm, or leave them out. Nothing was written."
            )
        if args.slurm and shutil.which("sbatch") is None:
            raise BatchError(
                "--slurm: SLURM is not available here (no `sbatch` on PATH). Run from a SLURM login node, or leave "
                "out --slurm to run the batch on this node. Nothing was written."
            )
        if args.slurm and args.time_min is None:
            raise BatchError("--slurm needs --time-min (the time limit of one job, in minutes). Nothing was written.")
        if options or (be.read_plan(batch) is None and not args.plan_only):
            _check_options(options)  # before plan.json is written
        plan = settle_plan(batch, args, options, write=not args.plan_only)
        if args.plan_only:
            return plan_only(plan, args)
        _check_options(plan["options"])
        with open(batch / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(f"another records/batch.py is running this batch ({batch}); let it finish.") from None
            if args.slurm or args.local_workers:
                at_once = args.local_workers or args.nodes_at_once or 1
                return run_jobs(batch, plan, make_executor(batch, args), at_once, 0.2 if args.local_workers else POLL_S)
            running = [
                f"{a}{i:03d} (job {job.job_id})" for (a, i), job in earlier_jobs(batch).items() if not job.done()
            ]
            if running:
                raise BatchError(
                    f"jobs that an earlier --slurm (or --local-workers) invocation submitted for this batch are still "
                    f"running: {', '.join(running)}. Continue it the same way (give --slurm and its options again), "
                    "or wait for them to end; running those runs here as well would make them twice."
                )
            return run_local(batch, plan)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def plan_only(plan: dict, args) -> int:
    minutes = args.minutes_per_run
    std = args.std or DEFAULT_STD
    scenarios = []
    if args.pilot:
        mean, std, pilot_minutes = pilot_figures(args.pilot)
        minutes = minutes or pilot_minutes
        scenarios.append(("as good as the pilot", mean, std))
    elif args.mean is not None:
        scenarios.append(("as good as the last batch", args.mean, std))
    scenarios.append(("no better than the target", plan["target"], std))
    if minutes is None or not math.isfinite(minutes):
        minutes = None
    sys.stdout.write(plan_text(plan, scenarios, minutes, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

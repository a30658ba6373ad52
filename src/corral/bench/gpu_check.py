"""The GPU check: a real GPU in a namespaces sandbox, with the bare GPU's figures beside it.

Run by ``scripts/gpu-check`` on a machine with an NVIDIA GPU (and, with ``--dry-run``, on
one without, where it runs the same steps with no GPU and says so). In order:

1. discovery and ``corral doctor``'s GPU rows (each GPU, the driver, per runtime whether a
   sandbox can have one and why not);
2. outside any sandbox: ``nvidia-smi`` and a PyTorch CUDA matrix product (bf16, n×n×n,
   median of ``reps`` timed with CUDA events after three warm-ups, checked against float64);
3. an image made from this host's own tree (``/usr``, ``/etc``, ``/opt``: hard links where
   they can be, so the sandbox runs the host's python and PyTorch without any download);
4. a namespaces sandbox with ``gpu=1``: ``nvidia-smi`` and the same product inside it; a
   second ``gpu=1`` create while it holds the only GPU (refused: exclusive); the sandbox's
   GPU reading (NVML) while it runs;
5. a JSON document of every figure (``--out``), and a short table last.

Every step is bounded (``timeout``), and a failing step is reported, not fatal, so one run
says as much as it can.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corral.api.errors import SandboxError
from corral.api.resources import Resources
from corral.node import NodeSettings, SyncNode
from corral.node.gpus import doctor_rows as gpu_rows
from corral.node.images import ImageStore
from corral.runtime import GvisorOptions, available_runtimes
from corral.runtime.gpu import GpuHost, discover, usage

#: The product, as a program of its own: run by the host's python3 and by the sandbox's.
MATMUL = r'''
import json, sys
out = {}
try:
    import torch
except ImportError as exc:
    print(json.dumps({"error": f"no torch: {exc}"})); sys.exit(0)
out["torch"] = torch.__version__
if not torch.cuda.is_available():
    out["error"] = "torch.cuda.is_available() is False"; print(json.dumps(out)); sys.exit(0)
n, reps = int(sys.argv[1]), int(sys.argv[2])
dev = torch.device("cuda")
out["device"] = torch.cuda.get_device_name(0)
g = torch.Generator(device=dev).manual_seed(1234)
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
c = torch.full((n, n), float("nan"), device=dev, dtype=torch.bfloat16)
torch.matmul(a, b, out=c)
ref = a[:256].double().cpu() @ b[:, :256].double().cpu()
got = c[:256, :256].double().cpu()
out["rel_error"] = float((got - ref).norm() / ref.norm())
out["all_written"] = bool(torch.isfinite(c).all().item())
for _ in range(3):
    torch.matmul(a, b, out=c)
torch.cuda.synchronize()
times = []
for _ in range(reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); torch.matmul(a, b, out=c); end.record(); end.synchronize()
    times.append(start.elapsed_time(end))
times.sort()
median = times[len(times) // 2]
out.update(n=n, reps=reps, median_ms=round(median, 4), min_ms=round(times[0], 4),
           tflops=round(2 * n ** 3 / (median / 1e3) / 1e12, 1),
           ok=out["all_written"] and out["rel_error"] < 1e-2)
print(json.dumps(out))
'''
SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used",
             "--format=csv,noheader"]


def _run(argv: list[str], timeout: float) -> dict[str, Any]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{argv[0]}: {exc}"}
    return {"exit_code": done.returncode, "stdout": done.stdout[-4000:],
            "stderr": done.stderr[-2000:]}


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return {"error": f"no JSON in its output: {text[-500:]!r}"}


def host_image(image_dir: Path, name: str = "python") -> None:
    """Make image ``name`` in ``image_dir`` from this host's own tree, as the image store
    would find a build of it: ``/usr``, ``/etc`` and ``/opt`` hard-linked (copied where a
    link cannot cross a filesystem; other mounts left out), the top-level links
    (``/bin -> usr/bin``) as they are."""
    store = ImageStore(image_dir)
    key = store.recipes[name].cache_key()
    directory = image_dir / f"{name}-{key}"
    if (directory / "image.json").exists():
        return
    rootfs = directory / "rootfs"
    rootfs.mkdir(parents=True)
    os.chmod(directory, 0o755)
    os.chmod(rootfs, 0o755)
    for top in sorted(os.listdir("/")):
        source = Path("/") / top
        if source.is_symlink():
            (rootfs / top).symlink_to(os.readlink(source))
        elif top in ("usr", "etc", "opt", "bin", "sbin", "lib", "lib64", "lib32") and \
                source.is_dir():
            linked = subprocess.run(["cp", "-a", "-x", "-l", str(source), str(rootfs / top)],
                                    capture_output=True, timeout=300)
            if linked.returncode != 0:  # another filesystem: copy what is left
                subprocess.run(["cp", "-a", "-x", "-n", str(source), str(rootfs)],
                               capture_output=True, timeout=300, check=True)
    for folder, mode in (("proc", 0o555), ("dev", 0o755), ("sys", 0o555), ("tmp", 0o1777),
                         ("root", 0o700), ("work", 0o755), ("home", 0o755), ("run", 0o755),
                         ("var/tmp", 0o1777)):
        (rootfs / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / folder, mode)
    (directory / "image.json").write_text(json.dumps({"name": name, "key": key,
                                                      "size_bytes": 0, "from": "host"}))


def check(*, python: str, n: int, reps: int, dry_run: bool, work: Path) -> dict[str, Any]:
    """Every step above; returns the figures (a failed step's ``error`` among them)."""
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    host: GpuHost = discover()
    report["discovery"] = {"gpus": [g.__dict__ for g in host.gpus], "driver": host.driver,
                           "source": host.source, "reason": host.reason}
    runtimes = available_runtimes(gvisor=GvisorOptions.from_env())
    report["doctor"] = {"gpu_rows": [list(row) for row in gpu_rows(host, runtimes)],
                        "runtimes": {n_: {"ok": s.ok, "detail": s.detail}
                                     for n_, (_, s) in runtimes.items()}}
    print("== doctor", json.dumps(report["doctor"], indent=1), flush=True)
    report["outside"] = {"nvidia_smi": _run(SMI_QUERY, 60),
                         "matmul": _last_json(_run([python, "-c", MATMUL, str(n), str(reps)],
                                                   300).get("stdout", ""))}
    print("== outside", json.dumps(report["outside"]), flush=True)
    images, data = work / "images", work / "data"
    try:
        host_image(images)
    except (OSError, subprocess.SubprocessError) as exc:
        report["inside"] = {"error": f"making the image from this host's tree: {exc}"}
        return report
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o711)
    os.chmod(data, 0o711)
    gpu = 0 if dry_run else 1
    inside: dict[str, Any] = {"gpu": gpu}
    report["inside"] = inside
    try:
        with SyncNode(NodeSettings(data_dir=data, image_dir=images, tune_cgroups=False)) as node:
            started = time.monotonic()
            memory = min(16384, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                         // 2**21)  # MiB: half the host's, at most 16 GiB
            sb = node.create("python", runtime="namespaces", timeout=900,
                             resources=Resources.parse(gpu=gpu, memory=memory,
                                                       cpus=min(4, os.cpu_count() or 1)))
            inside["create_s"] = round(time.monotonic() - started, 3)
            try:
                inside["devices"] = sb.commands.run("ls /dev").stdout.split()
                smi = sb.commands.run(" ".join(SMI_QUERY), timeout=60)
                inside["nvidia_smi"] = {"exit_code": smi.exit_code, "stdout": smi.stdout,
                                        "stderr": smi.stderr[-2000:]}
                full = sb.commands.run("nvidia-smi", timeout=60)
                print("== nvidia-smi in the sandbox\n" + full.stdout + full.stderr, flush=True)
                sb.files.write("/tmp/matmul.py", MATMUL)
                ran = sb.commands.run([python, "/tmp/matmul.py", str(n), str(reps)],
                                      timeout=300)
                inside["matmul"] = _last_json(ran.stdout)
                if ran.exit_code != 0:
                    inside["matmul_stderr"] = ran.stderr[-3000:]
                minors = tuple(m for m, holder in node.node.gpus.holders().items()
                               if holder == sb.id)
                inside["gpus_held"] = list(minors)
                inside["nvml_reading"] = {str(k): v.__dict__ for k, v in usage(minors).items()}
                if gpu:
                    try:
                        other = node.create("python", runtime="namespaces", timeout=60,
                                            resources=Resources.parse(gpu=len(host.gpus)))
                        other.kill()
                        inside["second_create"] = "started: NOT exclusive"
                    except SandboxError as exc:
                        inside["second_create"] = f"{exc.code}: {exc.message}"
            finally:
                sb.kill()
            inside["released"] = node.node.gpus.holders() == {}
    except SandboxError as exc:
        inside["error"] = f"{exc.code}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - report it with the figures so far
        inside["error"] = f"{type(exc).__name__}: {exc}"
    return report


def summary(report: dict[str, Any]) -> str:
    out, inside = report.get("outside", {}), report.get("inside", {})
    mo, mi = out.get("matmul", {}), inside.get("matmul", {})
    lines = ["", "| where | device | bf16 n | median ms | TFLOP/s | rel. error | ok |",
             "|---|---|---|---|---|---|---|"]
    for label, m in (("outside (bare)", mo), ("in a namespaces sandbox", mi)):
        lines.append(f"| {label} | {m.get('device', '-')} | {m.get('n', '-')} | "
                     f"{m.get('median_ms', '-')} | {m.get('tflops', '-')} | "
                     f"{m.get('rel_error', '-')} | {m.get('ok', m.get('error', '-'))} |")
    if mo.get("median_ms") and mi.get("median_ms"):
        lines.append(f"\nsandbox / bare median time: {mi['median_ms'] / mo['median_ms']:.3f}x")
    lines.append(f"driver: {report.get('discovery', {}).get('driver')}; "
                 f"second gpu create: {inside.get('second_create', '-')}; "
                 f"released on kill: {inside.get('released', '-')}")
    if "error" in inside:
        lines.append(f"sandbox step failed: {inside['error']}")
    return "\n".join(lines)


def work_parent() -> str:
    """Where the image made from this host goes: a folder on the filesystem of ``/usr``
    (hard links instead of copies of the host's GBs of CUDA and PyTorch), else /var/tmp."""
    usr = os.stat("/usr").st_dev
    for candidate in ("/var/tmp", "/tmp", "/root", "/"):
        try:
            if os.stat(candidate).st_dev == usr and os.access(candidate, os.W_OK):
                return candidate
        except OSError:
            continue
    return "/var/tmp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py")
    parser.add_argument("--python", default=shutil.which("python3") or "python3",
                        help="the python3 with PyTorch (the same path inside the sandbox)")
    parser.add_argument("-n", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU here: the same steps with gpu=0")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="corral-gpu-check-", dir=work_parent()))
    print(f"== work folder {work}", flush=True)
    report = check(python=os.path.realpath(args.python) if args.dry_run else args.python,
                   n=args.n, reps=args.reps, dry_run=args.dry_run, work=work)
    mounted = Path("/proc/self/mountinfo").read_text()
    if str(work) not in mounted:  # never delete through a mount a failed step left
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1, default=str)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print("== report\n" + text)
    print(summary(report))
    ok = args.dry_run or bool(report.get("inside", {}).get("matmul", {}).get("ok"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

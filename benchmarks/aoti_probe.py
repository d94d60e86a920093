"""Does AOTInductor compile *and load* on this machine? A minimal model, no gr00t code, each step in its own process.

    python benchmarks/aoti_probe.py --out /tmp/aoti_probe [--device cuda]

Prints one line per case: compile / load (fresh process) / load single-threaded / weights outside the .so.
A case whose process dies with a signal is reported with that signal, so a crash does not end the probe.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CASES = {
    "default": {},
    "constants_outside_so": {"aot_inductor.package_constants_in_so": False},
    "so_runner": {},  # bare .so (torch._inductor.aot_compile) run by AOTIModelContainerRunner, no package loader
}


def child(mode: str, case: str, out: Path, device: str) -> None:
    import torch
    import torch._inductor

    package = out / f"{case}.pt2"
    if mode == "compile":
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
        model = model.to(device, torch.float16).eval()
        x = torch.randn(4, 64, device=device, dtype=torch.float16)
        with torch.no_grad():
            program = torch.export.export(model, (x,))
            if case == "so_runner":
                so = torch._inductor.aot_compile(program.module(), (x,), options={"aot_inductor.package": False})
                (out / "so_runner.path").write_text(str(so))
            else:
                torch._inductor.aoti_compile_and_package(program, package_path=str(package),
                                                         inductor_configs=CASES[case])
        torch.save({"x": x.cpu(), "y": model(x).detach().cpu()}, out / f"{case}.io")
        return
    io = torch.load(out / f"{case}.io")
    if case == "so_runner":
        loaded = torch._export.aot_load((out / "so_runner.path").read_text(), device)
    else:
        loaded = torch._inductor.aoti_load_package(str(package), run_single_threaded=mode == "load_single_threaded")
    y = loaded(io["x"].to(device))
    y = y[0] if isinstance(y, list | tuple) else y
    print(f"max abs vs eager {(y.cpu().float() - io['y'].float()).abs().max().item():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/aoti_probe"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--child", nargs=2, metavar=("MODE", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(*args.child, args.out, args.device)
    for case in args.cases.split(","):
        for mode in ("compile", "load") if case == "so_runner" else ("compile", "load", "load_single_threaded"):
            proc = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--out", str(args.out), "--device",
                                   args.device, "--child", mode, case], capture_output=True, text=True)
            where = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("File ")][:2]
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode} {' <- '.join(where)}"
            print(f"{case:22s} {mode:22s} {status} {last}", flush=True)
            if mode == "compile" and proc.returncode != 0:
                break


if __name__ == "__main__":
    main()

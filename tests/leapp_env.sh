#!/usr/bin/env bash
# An isolated venv with leapp==0.7.2 for the IGG conformance test, cached in .venv-leapp/ (git-ignored).
#
# leapp hard-requires the CPU `onnxruntime` dist and pulls onnxscript/onnx-ir/fast-sugiyama; installing it
# into the project venv could clobber onnxruntime-gpu, so it gets its own venv. That venv sees the calling
# venv's site-packages (torch, onnx, numpy: nothing is downloaded twice) *behind* its own, so its pins win.
#
# usage: tests/leapp_env.sh PARENT_PYTHON   -> prints the leapp venv's python on success
set -euo pipefail
cd "$(dirname "$0")/.."
parent_py="${1:?usage: tests/leapp_env.sh PARENT_PYTHON}"
venv=.venv-leapp
py="$venv/bin/python"
if [ -x "$py" ] && "$py" -c "import leapp" >/dev/null 2>&1; then
    echo "$PWD/$py"
    exit 0
fi
rm -rf "$venv"
base=$("$parent_py" -c "import sys; print(getattr(sys, '_base_executable', sys.executable))")
parent_site=$("$parent_py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$base" -m venv "$venv" >&2
site_dir=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# addsitedir (not a bare path line) so the parent's own .pth files (editable installs) are honoured too.
echo "import site; site.addsitedir('$parent_site')" > "$site_dir/_parent_site.pth"
"$py" -m pip install -q --disable-pip-version-check -c constraints.txt "leapp==0.7.2" >&2
"$py" -c "import leapp" >&2
echo "$PWD/$py"

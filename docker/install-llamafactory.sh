#!/usr/bin/env bash
# Install the pinned LLaMA-Factory, its text-training requirements and this project's patches into PYTHON's
# environment, never replacing the torch (or Transformer Engine) already there. The image and CI both use it.
# Extra pip requirements given as arguments are installed under the same constraint.
set -euo pipefail

PYTHON=${PYTHON:-python3}
LLAMAFACTORY_VERSION=0.9.5
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

keep_installed=$(mktemp)
trap 'rm -f "$keep_installed"' EXIT
"$PYTHON" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|torchvision|torchaudio|triton|transformer[-_]engine[-_a-z0-9]*)==' >"$keep_installed" || true

"$PYTHON" -m pip install --no-deps "llamafactory==${LLAMAFACTORY_VERSION}"
"$PYTHON" -m pip install -c "$keep_installed" -r "$project/docker/requirements-llamafactory.txt" "$@"

site_packages=$("$PYTHON" -c 'import llamafactory, pathlib; print(pathlib.Path(llamafactory.__file__).parent.parent)')
for change in "$project/patches/llamafactory-${LLAMAFACTORY_VERSION}"/*.patch; do
  if patch --dry-run --reverse --force --silent -p1 -d "$site_packages" <"$change" >/dev/null 2>&1; then
    echo "already applied: $(basename "$change")"
  else
    patch --forward -p1 -d "$site_packages" <"$change"
  fi
done

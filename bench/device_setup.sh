# Sourced at the start of a call on the lent GPU machine, from the root of the tree (or of a snapshot of it):
# install the carried wheels (.whl) into /tmp/site, apply our LLaMA-Factory patches, set the import path.
rm -rf /tmp/site # a warm machine keeps the last call's, and the patches do not apply twice
wheels=.whl
[ -d "$wheels" ] || wheels=../.whl # beside a snapshot of the tree (.gpu/), as the earlier calls ran
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl || return 1
version=$(sed -n 's/^llamafactory==\([^ ]*\) .*/\1/p' docker/requirements.lock) # the pin, written once
(cd /tmp/site && for p in "$OLDPWD/patches/llamafactory-$version"/*.patch; do patch -s -p1 <"$p" || exit 1; done) || return 1
export PYTHONPATH=/tmp/site:$PWD/entrypoint:$PWD/healthcheck PYTHONUNBUFFERED=1
if [ -d /tmp/te-site ]; then # Transformer Engine, which bench/transformer_engine.sh installed in an earlier call
  export PYTHONPATH=$PYTHONPATH:/tmp/te-site
fi
nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv

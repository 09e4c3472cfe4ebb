#!/bin/sh
# `pip wheel ARGS...` inside the image build: offline from deploy/wheelhouse (bind-mounted at /wheelhouse)
# when `make wheelhouse` filled it, from the package index when it holds no wheels.
set -eu
if ls /wheelhouse/*.whl >/dev/null 2>&1; then
  echo "pip wheel: offline, from deploy/wheelhouse ($(ls /wheelhouse/*.whl | wc -l) wheels)"
  exec python -m pip wheel --no-index --find-links /wheelhouse "$@"
fi
echo "pip wheel: deploy/wheelhouse holds no wheels, using the package index"
exec python -m pip wheel "$@"

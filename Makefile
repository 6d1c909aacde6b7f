# The two commands of README.md: `make run` (the main job end to end) and `make test`.
PY := .venv/bin/python
DATA_CONFIG ?= configs/data/ml-100k.yaml
TRAIN_CONFIG ?= configs/train/ml-100k.yaml

.PHONY: setup run test test-all prepare ray-start ray-stop bench clean

setup:
	bash scripts/setup.sh

# Data preparation (Ray), the three training stages and the evaluation report.
run: setup
	$(PY) -m launch.run_all --data-config $(DATA_CONFIG) --train-config $(TRAIN_CONFIG)

test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not benchmark" -q --durations=30

# Long runs for BENCHMARKS.md (hours on 2 CPU cores).
bench: setup
	$(PY) -m pytest -m benchmark -q

prepare: setup
	$(PY) -m data_pipeline.prepare --config $(DATA_CONFIG)

ray-start: setup
	bash scripts/ray_cluster.sh start

ray-stop:
	bash scripts/ray_cluster.sh stop

clean:
	rm -rf .pytest_cache runs data/cache

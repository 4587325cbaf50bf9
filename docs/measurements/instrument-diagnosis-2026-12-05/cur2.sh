set -e
cd /work/main
P=.venv/bin/python
for d in cur2a cur2b cur2c; do mkdir -p /tmp/exp/$d && ln -sfn /tmp/exp/e3/data /tmp/exp/$d/data; done
OMP_NUM_THREADS=2 $P /tmp/exp/exp.py /tmp/exp/cur2a --cat shape --frames 4 --steps 600 --scr
OMP_NUM_THREADS=2 $P /tmp/exp/exp.py /tmp/exp/cur2b --model /tmp/exp/cur2a/base/model --cat motion --frames 4 --steps 800 --scr
OMP_NUM_THREADS=2 $P /tmp/exp/exp.py /tmp/exp/cur2c --model /tmp/exp/cur2b/base/model --frames 4 --steps 800 --scr 0.5 0.75 1.0

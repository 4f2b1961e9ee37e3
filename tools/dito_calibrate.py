"""PMR curve and the interval calibrate_dito picks on the small DiT (4 calibration seeds, not the bench's).

    python tools/dito_calibrate.py
"""
import torch

from ditreduce.calibration.dito import calibrate_dito
from ditreduce.smalldit.models import load_small_dit
from ditreduce.smalldit.sampling import sample

torch.set_num_threads(1)
m = load_small_dit()
for ratio in (0.3, 0.5):
    s = calibrate_dito(m.transformer, lambda tr: sample(m, [0, 1, 2, 3], [100, 101, 102, 103], steps=20, transformer=tr),
                       20, ratio=ratio, max_interval=5, log=print)
    print(ratio, s["params"])

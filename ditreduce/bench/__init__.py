"""`ditreduce bench`: quality / speed / FLOPs / memory of every method on the same models, in one process.

models.py   the models benched (small-dit, pixart-alpha:TOKENS:BLOCKS, diffusers class + config, module:callable)
flops.py    FlopCounterMode counts, the probe exponent and equal-FLOPs ratios
memory.py   peak live tensor bytes of one call (TorchDispatchMode tracker)
speed.py    interleaved repeats and per-repeat speedups
quality.py  PSNR / SSIM of samples against dense on the same seeds
runner.py   the loop over models × methods × scopes × ratios × backends → BenchResults
report.py   results.json schema, markdown, Pareto plot, image grid
cli.py      `add_subcommands(sub)` for the `ditreduce` command line
"""

"""`ditreduce bench`: quality / speed / FLOPs / memory of every method on the same models, in one process.

models.py   the models benched (small-dit, pixart-alpha:TOKENS:BLOCKS, diffusers class + config, module:callable)
flops.py    FlopCounterMode counts, the probe exponent and equal-FLOPs ratios
memory.py   peak live tensor bytes of one call (TorchDispatchMode tracker; the CUDA allocator's peak on cuda)
speed.py    interleaved repeats and per-repeat speedups (perf_counter, or CUDA events on --device cuda)
quality.py  PSNR / SSIM of samples against dense on the same seeds
runner.py   the loop over models × configurations (methods × scopes × --params sets × ratios, --schedule
            files) × backends → BenchResults; --device / --dtype placement
report.py   results.json schema, markdown, Pareto plot, image grid, docs blocks (bench-docs)
cli.py      `add_subcommands(sub)` for the `ditreduce` command line
"""

"""The small PixArt-shaped DiT shipped with the package: model (`models`), synthetic scenes (`data`),
the flow-matching sampler (`sampling`) and image metrics (`metrics`) the demo, bench and calibration use."""

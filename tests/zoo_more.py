"""More of diffusers' image / video transformers with tiny random configs: shipped in ditreduce.zoo.more
(`ditreduce zoo` prints their table); the tests import them from here."""
from ditreduce.zoo.more import MORE, VIDEO  # noqa: F401
from ditreduce.zoo.more import *  # noqa: F401,F403

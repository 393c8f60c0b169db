"""Code formats, pure core: alphabets, patterns, generation from a CSPRNG, normalisation of
what shoppers type, entropy, and check characters. No I/O, no clock; imports nothing of ours."""

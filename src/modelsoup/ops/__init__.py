"""Streamed arithmetic on ingredients: lazy combinations and the running mean
(`arithmetic`), inner products, cosines and angles (`geometry`), and the compatibility
checks every operation runs first (`checks`)."""

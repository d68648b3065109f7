"""Streamed arithmetic on ingredients: lazy combinations (`arithmetic`), the running
mean greedy soups grow (`running_mean`), inner products, cosines and angles
(`geometry`), and the compatibility checks every operation runs first (`checks`)."""

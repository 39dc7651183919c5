"""Benchmark client for OpenAI-compatible servers (`semipd bench`): async streaming requests,
datasets (random, Azure trace, ShareGPT), TTFT/TPOT/ITL/E2E statistics, goodput and SLO
attainment, request-rate sweeps. Torch-free."""

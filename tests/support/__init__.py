"""Test harness shared by several suites: fakes that record what they receive and engines that
count what they compute, so tests observe behaviour instead of assuming it."""

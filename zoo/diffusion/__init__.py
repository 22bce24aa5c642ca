"""zoo.diffusion"""

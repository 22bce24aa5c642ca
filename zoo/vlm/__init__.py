"""zoo.vlm"""

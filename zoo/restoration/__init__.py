"""zoo.restoration"""

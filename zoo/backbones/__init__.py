"""zoo.backbones"""

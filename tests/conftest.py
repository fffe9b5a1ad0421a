"""Shared pytest setup: tests import the hand-built nets in tests/nets.py and run single-threaded."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))

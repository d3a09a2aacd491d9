"""Drop-in reward functions for RL trainers (TRL, veRL, open-instruct), built on flip_reward.client.
Each imports without its trainer installed.

OpenRLHF and slime call the service over HTTP directly: see flip_reward/api/compat.py.
"""

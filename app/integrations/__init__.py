"""Drop-in reward functions for RL trainers (TRL, veRL), built on app.client.

OpenRLHF and slime call the service over HTTP directly: see app/api/compat.py.
"""

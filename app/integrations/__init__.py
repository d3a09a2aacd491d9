"""Drop-in reward functions for RL trainers (TRL, veRL, open-instruct), built on app.client.
Each imports without its trainer installed.

OpenRLHF and slime call the service over HTTP directly: see app/api/compat.py.
"""

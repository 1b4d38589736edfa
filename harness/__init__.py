"""Harness: scripts that compute ground truth from the real libraries for the planner's tests."""

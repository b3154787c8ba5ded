"""Search backends: Optuna (default) and Ray Tune; both store trials in one Optuna storage."""

"""Eternal Engine: a multi-engine crypto portfolio with a pure decision core."""

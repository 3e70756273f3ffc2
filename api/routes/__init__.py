"""Thin HTTP routes: parse, call one service function, present the result."""

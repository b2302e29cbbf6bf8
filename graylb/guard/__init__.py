"""The canary guard: watch attempts on a canary and on its baseline, trip when the canary is worse.

``graylb.guard.stats`` holds the sliding window of outcomes and the statistics that judge it.
"""

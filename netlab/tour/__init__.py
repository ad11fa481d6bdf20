"""The guided tour: a lab's stages, the documents' story, run live and written up.

Drives the runner (up to each stage's step, down at the end) and the checks;
the only stage that both changes a lab and checks it. May import every stage
below it (check, remote, run, render, model).
"""

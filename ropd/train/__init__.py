"""GRPO update of the student on a round's rollouts and rewards."""

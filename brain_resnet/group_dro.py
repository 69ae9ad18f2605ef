"""Online group DRO for train.py --group-dro (Sagawa et al., "Distributionally Robust Neural Networks for Group
Shifts", ICLR 2020): the training loss is a weighted mean of the groups' mean losses, and the weights climb, step
by step, towards the groups the model does worst on.

A group is a cell of the data: one class of one source (sartaj's meningiomas, Br35H's healthy slices). Where a
small source's slices are outnumbered ten to one, plain averaging lets the model fit the large sources and carry
their shortcuts to it; group DRO makes the worst-fitted cell weigh most, whatever its size. A slice stays in the
group of its row when an augmentation changes its label (a pasted lesion on a Br35H slice is still a Br35H slice).
"""

import torch


def cell_ids(labels: torch.Tensor, sources: torch.Tensor, num_sources: int) -> torch.Tensor:
    """Each slice's (class, source) cell as one index: class * num_sources + source."""
    return labels * num_sources + sources


class GroupWeights:
    """The adversary's weights over `num_groups` cells, uniform at first over the cells that have training rows
    (`present`, bool (num_groups,)); the others stay at 0.

    Each step multiplies every cell's weight by exp(step_size * its mean loss over the whole batch, on every
    process) and renormalises: the exponentiated-gradient update of the paper's Algorithm 1.
    """

    def __init__(self, present: torch.Tensor, step_size: float):
        if not present.any():
            raise ValueError("group DRO needs at least one group with training rows")
        self.weights = present.double() / present.sum()
        self.step_size = step_size

    def loss(self, per_slice: torch.Tensor, groups: torch.Tensor, reduce=None) -> torch.Tensor:
        """The weighted mean of the batch's group losses (per_slice: float (B,), groups: long (B,)); updates the
        weights first. `reduce(tensor)`: the sum of a tensor over the training processes (accelerator.reduce), so
        that every process moves its weights alike; the loss itself uses this process's slices."""
        num_groups = len(self.weights)
        counts = torch.bincount(groups, minlength=num_groups).to(per_slice.dtype)
        sums = torch.zeros(num_groups, device=per_slice.device, dtype=per_slice.dtype).index_add(0, groups, per_slice)
        with torch.no_grad():
            totals = torch.stack([sums.detach(), counts])
            if reduce is not None:
                totals = reduce(totals)
            seen = totals[1] > 0
            group_loss = torch.where(seen, totals[0] / totals[1].clamp(min=1), 0.0)
            self.weights = self.weights * torch.exp(self.step_size * group_loss.double())
            self.weights = self.weights / self.weights.sum()
        local = sums / counts.clamp(min=1)  # a cell absent from this process's slices adds nothing
        return (self.weights.to(per_slice.dtype) * local).sum()

    def state_dict(self) -> dict:
        return {"weights": self.weights.tolist()}

    def load_state_dict(self, state: dict) -> None:
        weights = torch.tensor(state["weights"], dtype=torch.float64, device=self.weights.device)
        if weights.shape != self.weights.shape:
            raise ValueError(f"group weights for {len(weights)} groups, expected {len(self.weights)}")
        self.weights = weights

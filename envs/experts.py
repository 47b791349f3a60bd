"""Scripted waypoint experts for robosuite Lift and PickPlaceCan, with an optional choice of two strategies.

An expert reads privileged positions from the simulator and steps toward waypoints with the delta OSC_POSE
action `clip(gain * (target - eef), -1, 1)` (one unit = 5 cm per step). Strategy 0 / 1 approach the object
from the robot's left / right (+y / -y) before descending, so multimodal data holds two distinct paths
that the observation does not determine.
"""

import numpy as np

GAIN = 10.0
OPEN, CLOSE = -1.0, 1.0
SIDE_OFFSET = 0.12  # m, lateral offset of the approach waypoint per strategy


class WaypointExpert:
    """Follows a list of (target_fn, gripper, tolerance, min_steps) phases; one instance per episode."""

    def __init__(self, env, strategy=0):
        self.env = env
        self.raw = env.raw
        self.strategy = int(strategy)
        self.phases = self.make_phases()
        self.phase = 0
        self.phase_steps = 0

    def make_phases(self):
        """Return the phase list (subclasses)."""
        raise NotImplementedError

    def eef_pos(self):
        """End-effector position (world frame)."""
        return np.array(self.raw.sim.data.site_xpos[self.raw.robots[0].eef_site_id['right']])

    def side(self):
        """Lateral approach offset of this episode's strategy: +y for 0, -y for 1."""
        return SIDE_OFFSET if self.strategy == 0 else -SIDE_OFFSET

    def act(self):
        """Next 7-D action in [-1, 1]."""
        target_fn, gripper, tol, min_steps = self.phases[self.phase]
        target = target_fn()
        delta = target - self.eef_pos()
        reached = np.linalg.norm(delta) < tol and self.phase_steps >= min_steps
        if reached and self.phase < len(self.phases) - 1:
            self.phase += 1
            self.phase_steps = 0
            target_fn, gripper, tol, min_steps = self.phases[self.phase]
            delta = target_fn() - self.eef_pos()
        self.phase_steps += 1
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * delta, -1.0, 1.0)
        action[6] = gripper
        return action


class LiftExpert(WaypointExpert):
    """Lift: approach above the cube (from the strategy's side), descend, close, lift."""

    def cube(self):
        """Cube position."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.cube_body_id])

    def make_phases(self):
        """Waypoints of the lift."""
        grasp_at = {}

        def side_approach():
            return self.cube() + np.array([0.0, self.side(), 0.12])

        def above():
            return self.cube() + np.array([0.0, 0.0, 0.06])

        def grasp():
            return self.cube() + np.array([0.0, 0.0, -0.005])

        def hold():
            grasp_at.setdefault('p', self.eef_pos())
            return grasp_at['p']

        def lift():
            return hold() + np.array([0.0, 0.0, 0.15])

        return [(side_approach, OPEN, 0.02, 1), (above, OPEN, 0.015, 1), (grasp, OPEN, 0.008, 1),
                (hold, CLOSE, 1.0, 12), (lift, CLOSE, 0.0, 1)]


class CanExpert(WaypointExpert):
    """PickPlaceCan: approach from the strategy's side, grasp, carry over the bin, release, retreat."""

    def can(self):
        """Can position."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.obj_body_id['Can']])

    def bin_target(self):
        """Centre of the can's target bin region."""
        idx = [o.name for o in self.raw.objects].index('Can')
        return np.array(self.raw.target_bin_placements[idx])

    def make_phases(self):
        """Waypoints of the pick and place."""
        grasp_at = {}
        carry_z = 1.05

        def side_approach():
            return self.can() + np.array([0.0, self.side(), 0.12])

        def above():
            return self.can() + np.array([0.0, 0.0, 0.06])

        def grasp():
            return self.can() + np.array([0.0, 0.0, 0.0])

        def hold():
            grasp_at.setdefault('p', self.eef_pos())
            return grasp_at['p']

        def up():
            p = hold().copy()
            p[2] = carry_z
            return p

        def over_bin():
            p = self.bin_target()
            return np.array([p[0], p[1], carry_z])

        def lower():
            p = self.bin_target()
            return np.array([p[0], p[1], p[2] + 0.12])

        def retreat():
            p = self.bin_target()
            return np.array([p[0], p[1], carry_z + 0.05])

        return [(side_approach, OPEN, 0.02, 1), (above, OPEN, 0.015, 1), (grasp, OPEN, 0.01, 1),
                (hold, CLOSE, 1.0, 12), (up, CLOSE, 0.02, 1), (over_bin, CLOSE, 0.02, 1),
                (lower, CLOSE, 0.02, 1), (lower, OPEN, 1.0, 10), (retreat, OPEN, 0.0, 1)]


EXPERTS = {'lift': LiftExpert, 'can': CanExpert}

"""Scripted waypoint experts for robosuite Lift, PickPlaceCan and NutAssemblySquare, with two strategies.

An expert reads privileged positions from the simulator and steps toward waypoints with the delta OSC_POSE
action `clip(gain * (target - eef), -1, 1)` (one unit = 5 cm per step); Square also turns the gripper about
the vertical. Measured success (low_dim, random initial states): see tests/test_generate_demos.py.
Strategy 0 / 1 approach the object from the robot's left / right (+y / -y) before descending, so
multimodal data holds two distinct paths that the observation does not determine.
"""

import numpy as np

GAIN = 10.0
OPEN, CLOSE = -1.0, 1.0
SIDE_OFFSET = 0.12  # m, lateral offset of the approach waypoint per strategy
PHASE_TIMEOUT = 60  # steps before a phase is given up as reached
YAW_GAIN = 3.0  # rotation action per rad of yaw error


def wrap(angle, period):
    """Wrap an angle into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


def body_yaw(raw, body_id):
    """Yaw (rotation about world z) of a body's local x axis."""
    rot = raw.sim.data.body_xmat[body_id].reshape(3, 3)
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


class WaypointExpert:
    """Follows (target_fn, gripper, tolerance, min_steps[, speed]) phases; one instance per episode."""

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
        target_fn, gripper, tol, min_steps, speed = self._phase()
        delta = target_fn() - self.eef_pos()
        reached = np.linalg.norm(delta) < tol and self.phase_steps >= min_steps
        reached = reached or self.phase_steps >= PHASE_TIMEOUT  # e.g. blocked by the table: move on
        if reached and self.phase < len(self.phases) - 1:
            self.phase += 1
            self.phase_steps = 0
            target_fn, gripper, tol, min_steps, speed = self._phase()
            delta = target_fn() - self.eef_pos()
        self.phase_steps += 1
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * delta, -speed, speed)
        action[5] = np.clip(YAW_GAIN * self.yaw_error(), -1.0, 1.0)
        action[6] = gripper
        return action

    def _phase(self):
        """Current phase as (target_fn, gripper, tolerance, min_steps, speed); speed defaults to 1."""
        phase = self.phases[self.phase]
        return (*phase, 1.0) if len(phase) == 4 else phase

    def yaw_error(self):
        """Wanted rotation of the gripper about the vertical (rad); 0 keeps the current yaw."""
        return 0.0

    def gripper_yaw(self):
        """Yaw of the gripper's finger-closing axis (its local y axis) in the world frame."""
        rot = self.raw.sim.data.site_xmat[self.raw.robots[0].eef_site_id['right']].reshape(3, 3)
        return float(np.arctan2(rot[1, 1], rot[0, 1]))


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


class SquareExpert(WaypointExpert):
    """NutAssemblySquare: grasp the handle, lift, turn the nut square to the peg, drop it over the peg."""

    def nut_id(self):
        """Body id of the square nut."""
        return self.raw.obj_body_id['SquareNut']

    def nut(self):
        """Nut centre position."""
        return np.array(self.raw.sim.data.body_xpos[self.nut_id()])

    def handle(self):
        """Handle site position."""
        return np.array(self.raw.sim.data.site_xpos[self.raw.sim.model.site_name2id('SquareNut_handle_site')])

    def peg(self):
        """Square peg position (its axes are world-aligned)."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.peg1_body_id])

    def yaw_error(self):
        """Before the grasp: close across the handle; after: turn the nut square to the peg."""
        if self.phase <= 3:  # approach, above, descend, close
            return wrap(body_yaw(self.raw, self.nut_id()) + np.pi / 2 - self.gripper_yaw(), np.pi)
        if self.phase == 4 or self.phase >= 8:  # lifting (let the nut settle) / released
            return 0.0
        return 0.3 * wrap(-body_yaw(self.raw, self.nut_id()), np.pi / 2)  # turn slowly: a fast turn swings it

    def make_phases(self):
        """Waypoints of the nut placement."""
        grasp_at = {}
        table_z = float(self.raw.table_offset[2])
        carry_z = table_z + 0.25

        def side_approach():
            return self.handle() + np.array([0.0, self.side(), 0.12])

        def above():
            return self.handle() + np.array([0.0, 0.0, 0.06])

        def grasp():
            return self.handle() + np.array([0.0, 0.0, 0.002])

        def hold():
            grasp_at.setdefault('p', self.eef_pos())
            return grasp_at['p']

        def up():
            p = hold().copy()
            p[2] = carry_z
            return p

        def nut_to(target):
            return self.eef_pos() + (target - self.nut())

        def over_peg():
            p = self.peg()
            return nut_to(np.array([p[0], p[1], carry_z - 0.02]))

        def align():
            p = self.peg()
            return nut_to(np.array([p[0], p[1], table_z + 0.17]))  # nut bottom 1 cm above the peg top

        def retreat():
            p = self.eef_pos()
            return np.array([p[0], p[1], carry_z])

        return [(side_approach, OPEN, 0.02, 1), (above, OPEN, 0.01, 5), (grasp, OPEN, 0.005, 3),
                (hold, CLOSE, 1.0, 15), (up, CLOSE, 0.02, 10, 0.5), (up, CLOSE, 0.02, 20),
                (over_peg, CLOSE, 0.006, 20, 0.5),
                (align, CLOSE, 0.002, 15, 0.5), (align, OPEN, 1.0, 10), (retreat, OPEN, 0.0, 1)]


EXPERTS = {'lift': LiftExpert, 'can': CanExpert, 'square': SquareExpert}

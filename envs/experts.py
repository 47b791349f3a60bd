"""Scripted waypoint experts for robosuite Lift, PickPlaceCan and NutAssemblySquare, with two strategies.

An expert reads privileged positions from the simulator and steps toward waypoints with the delta OSC_POSE
action `clip(gain * (target - eef), -speed, speed)` (one unit = 5 cm per step); Square also turns the
gripper about the vertical and holds it pointing straight down. Every task starts with the same pick
(`WaypointExpert.pick_phases`: side approach, above, descend, close, up); a task adds only its object,
its grasp offsets and what follows the pick. Strategy 0 / 1 approach the object from the robot's
left / right (+y / -y) before descending, so multimodal data holds two distinct paths that the
observation does not determine.

The demos are meant to be imitated: a phase ends on the observable state (eef near its target, the fingers
come to rest, the nut turned square), never on a step count, so no demo waits with a constant action while
nothing moves; a new phase ramps its speed up with the distance moved instead of jumping to full speed.
PHASE_TIMEOUT is a safety net only (the phases it ended are listed in `timeouts`).

Measured with `run_episode` (low_dim, seeds from np.random.default_rng(123), strategy k % 2, as
tests/test_generate_demos.py::test_expert_success_rate does; phase timeouts read from `expert.timeouts`):
Lift 50/50 (demo length mean 61, max 66), Can 30/30 (151, 178), Square 100/100 (214, 333); one phase
timeout in those 180 demos (a Square approach whose wrist reached its joint limit). Before this design
(fixed 10-15 step gripper waits, 60-step timeouts): Can 161/208 long with 14 timeouts in 30 demos,
Square 88/100 with 73 timeouts.

Operators of mixed skill (robomimic MH-like data, `--mixed`): an `Operator` drives an expert with a
`Skill` (OPERATORS: 'better' = the expert, 'okay', 'worse'). It edits the expert's plan of phases once (a
wrong approach first, a re-grasp, a drop and a new pick, pauses) and slows and perturbs its translation
actions; the expert's state-ended phases then correct what the operator got wrong. The default Can file
(`can-mixed-low_dim`: 300 demos, seed 0, 319 attempts for 300 successes within 400 steps) has demo lengths
better 150 (133-171), okay 194 (151-262), worse 294 (166-400); mean |second difference| of the translation
actions 0.019 / 0.108 / 0.186; okay demos with a re-grasp 26, a pause 68; worse demos with a wrong approach
43, a drop 46, a re-grasp 13, a pause 81 (of 100 each).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

GAIN = 10.0
OPEN, CLOSE = -1.0, 1.0
SIDE_OFFSET = 0.12  # m, lateral offset of the approach waypoint per strategy
# Bumped whenever the experts' behaviour changes; generated files record it (stale files are flagged).
EXPERT_VERSION = 2  # 2: phases end on state, reachable grasp points, Square carried level
PHASE_TIMEOUT = 150  # steps before a phase is given up as reached (a safety net; no normal demo hits it)
YAW_GAIN = 3.0  # rotation action per rad of yaw error
WRIST_LIMIT = 2.7  # rad, Panda's last joint stops at +-2.9
LEVEL_GAIN = 1.0  # rotation action per rad of gripper tilt from vertical
START_SPEED, RAMP = 0.3, 20.0  # a phase starts at |action| <= 0.3, +0.2 per cm moved since it began
FINGER_REST = 5e-4  # m per step: fingers moving less than this have closed on the object
RELEASE_GAP = 0.012  # m the fingers open by before the object counts as let go
NOISE_FLOOR = 0.05  # an operator's translation noise scales with NOISE_FLOOR + |expert translation action|
MISS_DZ = 0.03  # m, a wrong approach closes this much higher than a grasp
FINISH_STEPS = 50  # steps in the plan's last phase after which an episode that has not succeeded is over


class Phase(NamedTuple):
    """One waypoint: move the eef toward target() with the gripper command until within tol and done()."""

    name: str
    target: Callable[[], np.ndarray]
    gripper: float
    tol: float = 0.01  # m
    speed: float = 1.0  # largest |action| per translation axis
    done: Callable[[], bool] | None = None  # further condition on the state to leave the phase


def wrap(angle, period):
    """Wrap an angle into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


def body_yaw(raw, body_id):
    """Yaw (rotation about world z) of a body's local x axis."""
    rot = raw.sim.data.body_xmat[body_id].reshape(3, 3)
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


class WaypointExpert:
    """Follows a list of Phases: the shared pick, then the task's own; one instance per episode.

    A subclass gives `grasp_point()` (what the fingers close on), the class constants below and
    `place_phases()` (what follows the pick).
    """

    APPROACH_HEIGHT = 0.12  # m above the grasp point, at the strategy's side
    ABOVE_HEIGHT = 0.06  # m above the grasp point, before descending
    GRASP_DZ = 0.0  # m, eef target relative to the grasp point when closing
    ABOVE_TOL, DESCEND_TOL = 0.015, 0.01  # m
    LIFT_SPEED = 1.0
    DROP_DZ = (0.04, 0.1)  # m lifted before an operator's drop (uniform range; Operator)
    LEVEL = False  # keep the gripper pointing straight down (see level_action)

    def __init__(self, env, strategy=0):
        self.env = env
        self.raw = env.raw
        self.strategy = int(strategy)
        self._fingers = self._prev_fingers = self.finger_gap()
        self.phases = self.pick_phases() + self.place_phases()
        self.phase = 0
        self.phase_steps = 0
        self.starts = {self.phases[0].name: self.eef_pos()}  # phase name -> eef position at its start
        self.gap_at_start = self._fingers
        self.timeouts = []  # names of the phases left by PHASE_TIMEOUT (diagnostics)

    # --- what a task states -------------------------------------------------------------------------
    def grasp_point(self):
        """Point the fingers close on (subclasses)."""
        raise NotImplementedError

    def carry_z(self):
        """Height (world z) the eef carries the object at (subclasses)."""
        raise NotImplementedError

    def place_phases(self):
        """Phases after the pick (subclasses)."""
        raise NotImplementedError

    # --- the shared pick ----------------------------------------------------------------------------
    def pick_phases(self):
        """Approach from the strategy's side, go above, descend, close until the fingers rest, lift."""
        def side_approach():
            return self.grasp_point() + np.array([0.0, self.side(), self.APPROACH_HEIGHT])

        def above():
            return self.grasp_point() + np.array([0.0, 0.0, self.ABOVE_HEIGHT])

        def descend():
            return self.grasp_point() + np.array([0.0, 0.0, self.GRASP_DZ])

        def up():
            p = self.start_of('close')
            return np.array([p[0], p[1], self.carry_z()])

        return [Phase('side_approach', side_approach, OPEN, 0.03),  # passed through, not stopped at
                Phase('above', above, OPEN, self.ABOVE_TOL, done=self.aligned),
                Phase('descend', descend, OPEN, self.DESCEND_TOL, done=self.aligned),
                Phase('close', self.hold, CLOSE, 1.0, done=self.fingers_rest),  # no wait once they rest
                Phase('up', up, CLOSE, 0.02, self.LIFT_SPEED)]

    def open_phase(self, name):
        """Open where the eef is until the fingers have let go (whatever they held)."""
        def let_go():
            return self.finger_gap() > self.gap_at_start + RELEASE_GAP

        return Phase(name, self.hold, OPEN, 1.0, done=let_go)

    def rise_phase(self, name, after, dz, gripper):
        """Move straight up by dz from where phase `after` began."""
        return Phase(name, lambda: self.start_of(after) + np.array([0.0, 0.0, dz]), gripper, 0.01)

    def release_phases(self, retreat_dz=0.1):
        """Open where the eef is until the fingers have let go, then move straight up by retreat_dz."""
        def retreat():
            return self.start_of('release') + np.array([0.0, 0.0, retreat_dz])

        return [self.open_phase('release'), Phase('retreat', retreat, OPEN, 0.0)]

    # --- what a less skilled operator adds to the plan (see Operator) ----------------------------------
    def regrasp_phases(self):
        """Let the grasp go, rise a little and redo above / descend / close (inserted after 'close')."""
        return [self.open_phase('regrasp_open'), self.rise_phase('regrasp_rise', 'regrasp_open', 0.03, OPEN),
                *self.pick_phases()[1:4]]

    def drop_phases(self, dz):
        """Lift by dz, open (the object falls), rise, pick it up again (inserted before 'up')."""
        return [self.rise_phase('lift_part', 'close', dz, CLOSE), self.open_phase('drop'),
                self.rise_phase('drop_rise', 'drop', 0.04, OPEN), *self.pick_phases()[1:4]]

    def miss_phases(self, offset):
        """A wrong approach: descend `offset` (m, horizontal) beside the grasp point, close on nothing, open,
        rise (inserted at the start; the plan then approaches as the expert does)."""
        def wrong(dz):
            return lambda: self.grasp_point() + np.array([offset[0], offset[1], dz])

        return [Phase('miss_above', wrong(self.ABOVE_HEIGHT), OPEN, 0.02),
                Phase('miss_descend', wrong(self.GRASP_DZ + MISS_DZ), OPEN, 0.015),
                Phase('miss_close', self.hold, CLOSE, 1.0, done=self.fingers_rest),
                Phase('miss_open', self.hold, OPEN, 1.0, done=self.fingers_rest),
                self.rise_phase('miss_rise', 'miss_open', self.ABOVE_HEIGHT, OPEN)]

    def misplace(self):
        """Aim what follows the pick at a wrong place (subclasses that place the object; see Operator)."""
        raise ValueError(f'{type(self).__name__}: this task places nothing, so an operator cannot misplace '
                         'the object (Skill.misplace must be 0)')

    def pause_phase(self, steps, gripper):
        """Stay where the eef is for `steps` steps, the gripper command unchanged (a hesitation)."""
        return Phase('pause', self.hold, gripper, 1.0, done=lambda: self.phase_steps >= steps)

    def replan(self, phases):
        """Follow `phases` from their start instead (before the first act)."""
        self.phases = list(phases)
        self.phase = self.phase_steps = 0
        self.starts = {self.phases[0].name: self.eef_pos()}

    # --- state ------------------------------------------------------------------------------------------
    def eef_pos(self):
        """End-effector position (world frame)."""
        return np.array(self.raw.sim.data.site_xpos[self.raw.robots[0].eef_site_id['right']])

    def finger_gap(self):
        """Distance between the two finger joints (m)."""
        q = self.raw.robots[0]._ref_gripper_joint_pos_indexes['right']
        return float(self.raw.sim.data.qpos[q[0]] - self.raw.sim.data.qpos[q[1]])

    def fingers_rest(self):
        """The fingers have stopped moving (closed on the object, or fully open)."""
        return self.phase_steps >= 2 and abs(self._fingers - self._prev_fingers) < FINGER_REST

    def start_of(self, name):
        """Eef position when phase `name` began."""
        return self.starts[name]

    def hold(self):
        """Stay where the current phase began (while the gripper closes or opens)."""
        return self.starts[self.phase_name()]

    def side(self):
        """Lateral approach offset of this episode's strategy: +y for 0, -y for 1."""
        return SIDE_OFFSET if self.strategy == 0 else -SIDE_OFFSET

    def yaw_error(self):
        """Wanted rotation of the gripper about the vertical (rad); 0 keeps the current yaw."""
        return 0.0

    def level_action(self):
        """Rotation action about the world x, y axes that keeps the gripper pointing straight down.

        The delta OSC_POSE controller never corrects orientation drift: carrying the Square nut, the
        gripper sagged by 20-40 degrees and the tilted nut landed on top of the peg.
        """
        if not self.LEVEL:
            return np.zeros(2)
        down = self.raw.sim.data.site_xmat[self.raw.robots[0].eef_site_id['right']].reshape(3, 3)[:, 2]
        axis = np.cross(down, [0.0, 0.0, -1.0])
        s = np.linalg.norm(axis)
        tilt = axis * (np.arctan2(s, -down[2]) / s) if s > 1e-9 else np.zeros(3)
        return np.clip(LEVEL_GAIN * tilt[:2], -0.3, 0.3)

    def aligned(self):
        """The gripper's yaw is where yaw_error() wants it."""
        return abs(self.yaw_error()) < 0.05

    def gripper_yaw(self):
        """Yaw of the gripper's finger-closing axis (its local y axis) in the world frame."""
        rot = self.raw.sim.data.site_xmat[self.raw.robots[0].eef_site_id['right']].reshape(3, 3)
        return float(np.arctan2(rot[1, 1], rot[0, 1]))

    # --- stepping -------------------------------------------------------------------------------------
    def _reached(self, ph):
        """Phase ph is done at the current state."""
        near = np.linalg.norm(ph.target() - self.eef_pos()) < ph.tol
        return near and (ph.done is None or ph.done())

    def act(self):
        """Next 7-D action in [-1, 1]."""
        self._prev_fingers, self._fingers = self._fingers, self.finger_gap()
        ph = self.phases[self.phase]
        timeout = self.phase_steps >= PHASE_TIMEOUT
        if self.phase < len(self.phases) - 1 and (self._reached(ph) or timeout):
            if timeout and not self._reached(ph):
                self.timeouts.append(ph.name)
            self.phase += 1
            self.phase_steps = 0
            ph = self.phases[self.phase]
            self.starts[ph.name] = self.eef_pos()
            self.gap_at_start = self._fingers
        delta = ph.target() - self.eef_pos()
        self.phase_steps += 1
        moved = np.linalg.norm(self.eef_pos() - self.starts[ph.name])
        speed = min(ph.speed, START_SPEED + RAMP * moved)
        action = np.zeros(7)
        action[:3] = np.clip(GAIN * delta, -speed, speed)
        action[3:5] = self.level_action()
        action[5] = np.clip(YAW_GAIN * self.yaw_error(), -1.0, 1.0)
        action[6] = ph.gripper
        return action

    def phase_name(self):
        """Name of the current phase."""
        return self.phases[self.phase].name

    def finished(self):
        """The plan has run out: FINISH_STEPS steps spent in its last phase (a success ends sooner)."""
        return self.phase == len(self.phases) - 1 and self.phase_steps >= FINISH_STEPS


class LiftExpert(WaypointExpert):
    """Lift: the shared pick of the cube; the episode succeeds during the lift."""

    GRASP_DZ = -0.005
    DESCEND_TOL = 0.008
    DROP_DZ = (0.005, 0.012)  # the cube counts as lifted 2 cm up: a drop must come before

    def grasp_point(self):
        """Cube position."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.cube_body_id])

    def carry_z(self):
        """15 cm above the grasp."""
        return self.start_of('close')[2] + 0.15

    def place_phases(self):
        """Nothing after the lift."""
        return []


class CanExpert(WaypointExpert):
    """PickPlaceCan: the shared pick, then carry over the bin, lower, release, retreat."""

    GRASP_DZ = 0.01  # the fingertips reach the bin floor 1 cm above the can centre
    wrong_bin = None  # index of the bin region a misplacing operator carries the can to (misplace)

    def grasp_point(self):
        """Can position."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.obj_body_id['Can']])

    def own_bin(self):
        """Index of the can's target bin region in target_bin_placements."""
        return [o.name for o in self.raw.objects].index('Can')

    def bin_target(self):
        """Centre of the bin region the can is carried to: its own, or the wrong one after misplace()."""
        idx = self.own_bin() if self.wrong_bin is None else self.wrong_bin
        return np.array(self.raw.target_bin_placements[idx])

    def misplace(self):
        """Carry the can to the nearest other bin region (another object's), where it does not count."""
        places, own = np.asarray(self.raw.target_bin_placements), self.own_bin()
        others = [i for i in range(len(places)) if i != own]
        self.wrong_bin = min(others, key=lambda i: float(np.linalg.norm(places[i][:2] - places[own][:2])))

    def carry_z(self):
        """Carry height (world z), clear of the bin walls."""
        return 1.05

    def place_phases(self):
        """Over the bin, lower, open, retreat."""
        def over_bin():
            p = self.bin_target()
            return np.array([p[0], p[1], self.carry_z()])

        def lower():
            p = self.bin_target()
            return np.array([p[0], p[1], p[2] + 0.12])

        return [Phase('over_bin', over_bin, CLOSE, 0.04),  # passed through on the way down
                Phase('lower', lower, CLOSE, 0.02), *self.release_phases()]


class SquareExpert(WaypointExpert):
    """NutAssemblySquare: the shared pick of the handle, turn the nut square to the peg, drop it over."""

    GRASP_DZ = 0.002
    ABOVE_TOL, DESCEND_TOL = 0.01, 0.005
    LIFT_SPEED = 0.5  # a fast lift swings the nut
    LEVEL = True  # a sagging gripper tilts the nut, which then lands on top of the peg
    CARRY_SPEED = 0.5
    XY_TOL = 0.003  # m, nut centre over the peg before it is lowered

    def nut_id(self):
        """Body id of the square nut."""
        return self.raw.obj_body_id['SquareNut']

    def nut(self):
        """Nut centre position."""
        return np.array(self.raw.sim.data.body_xpos[self.nut_id()])

    def grasp_point(self):
        """Handle site position."""
        return np.array(self.raw.sim.data.site_xpos[self.raw.sim.model.site_name2id('SquareNut_handle_site')])

    wrong_peg = False  # a misplacing operator drops the square nut over the round peg (misplace)

    def peg(self):
        """Square peg position (its axes are world-aligned); the round peg's after misplace()."""
        return np.array(self.raw.sim.data.body_xpos[self.raw.peg2_body_id if self.wrong_peg
                                                    else self.raw.peg1_body_id])

    def misplace(self):
        """Carry the nut to the round peg, where it does not count."""
        self.wrong_peg = True

    def table_z(self):
        """Table top height."""
        return float(self.raw.table_offset[2])

    def carry_z(self):
        """Carry height: the nut clears the peg."""
        return self.table_z() + 0.25

    def yaw_error(self):
        """Before the grasp: close across the handle; carrying: turn the nut square to the peg."""
        name = self.phase_name()
        if name in ('side_approach', 'above', 'descend', 'close'):
            return wrap(body_yaw(self.raw, self.nut_id()) + np.pi / 2 - self.gripper_yaw(), np.pi)
        if name in ('over_peg', 'align'):
            return float(np.clip(0.3 * self.nut_turn(), -0.1, 0.1))  # slowly: a fast turn swings it
        return 0.0

    def wrist(self):
        """Angle of the Panda's last joint (rad); it turns opposite to the gripper's yaw."""
        return float(self.raw.sim.data.qpos[self.raw.robots[0]._ref_joint_pos_indexes[6]])

    def nut_turn(self):
        """Turn (rad) that squares the nut to the peg, preferring its handle toward the robot.

        Over the peg the arm is near full extension: with the handle pointing away (+x) or sideways the
        eef must reach 0-5 cm beyond the peg and the stretched arm stalls there; with the handle toward
        the robot (-x) it stops 5 cm short. A turn is scored |turn| + 2 x (handle's x direction) and must
        keep the last wrist joint (which turns opposite to the gripper's yaw) inside its range.
        """
        yaw = body_yaw(self.raw, self.nut_id())
        wrist = self.wrist()
        best, turn = np.inf, 0.0
        for k in range(-4, 5):
            target = k * np.pi / 2
            t = target - yaw
            score = abs(t) + 2.0 * np.cos(target)
            if abs(t) < 1.2 * np.pi and abs(wrist - t) < WRIST_LIMIT and score < best:
                best, turn = score, t
        return float(turn)

    def nut_xy_error(self):
        """Horizontal distance of the nut centre from the peg axis (m)."""
        return float(np.linalg.norm((self.nut() - self.peg())[:2]))

    def place_phases(self):
        """Carry the nut over the peg while turning it, lower it once centred, release, retreat."""
        def nut_to(target):
            return self.eef_pos() + (target - self.nut())

        def over_peg():
            p = self.peg()
            return nut_to(np.array([p[0], p[1], self.carry_z() - 0.02]))

        def align():
            # Lower only while the nut is centred over the peg; otherwise re-centre at the carry height.
            p = self.peg()
            z = self.table_z() + 0.17 if self.nut_xy_error() < 2 * self.XY_TOL else self.carry_z() - 0.02
            return nut_to(np.array([p[0], p[1], z]))  # nut bottom 1 cm above the peg top

        def centred():
            return self.nut_xy_error() < self.XY_TOL and abs(self.nut_turn()) < 0.03

        return [Phase('over_peg', over_peg, CLOSE, 0.01, self.CARRY_SPEED, done=centred),
                Phase('align', align, CLOSE, 0.003, self.CARRY_SPEED, done=centred),
                *self.release_phases()]


EXPERTS = {'lift': LiftExpert, 'can': CanExpert, 'square': SquareExpert}


# --- operators of mixed skill (robomimic MH-like data) -------------------------------------------------
OPERATOR_VERSION = 1  # bumped whenever an existing group's demos change; mixed files record it


class Skill(NamedTuple):
    """How an operator departs from the expert; the all-default Skill() is the expert itself."""

    speed: float = 1.0  # cap on |translation action| per axis (< 1: slower in transit, as precise at targets)
    noise: float = 0.0  # std of the translation noise per unit of commanded motion (AR(1) in time; Operator)
    noise_corr: float = 0.7  # AR(1) coefficient of that noise from one step to the next
    pause: float = 0.0  # probability of a pause (hesitation) before each phase
    pause_steps: tuple = (5, 20)  # uniform range of a pause's length, steps
    regrasp: float = 0.0  # probability that the first grasp is let go and redone
    miss: float = 0.0  # probability of a wrong approach first (Operator)
    miss_offset: tuple = (0.04, 0.07)  # m, uniform range of how far beside the grasp point it goes
    drop: float = 0.0  # probability of dropping the object once while lifting it, then picking it up again
    misplace: float = 0.0  # probability of carrying the object to a wrong place (Can: the nearest other bin
    # region; Square: the round peg) and leaving it there, so the episode fails (Lift places nothing)


# The three groups of robomimic's MH datasets ('better', 'okay', 'worse' operators).
OPERATORS = {
    'better': Skill(),
    'okay': Skill(speed=0.7, noise=0.15, pause=0.15, pause_steps=(5, 15), regrasp=0.3),
    'worse': Skill(speed=0.6, noise=0.3, pause=0.15, pause_steps=(5, 15), regrasp=0.2, miss=0.5, drop=0.5),
    # Not in robomimic MH, and in no default mix: an operator as fast as the expert who always puts the object
    # in the wrong place. Its demos fail, so they need --keep_failures; they give a critic fast chunks that
    # fail, which MH-like data lacks (every kept demo succeeds and only the expert is fast).
    'careless': Skill(noise=0.1, misplace=1.0),
}


class Operator:
    """A task's expert driven by an operator of a given Skill; one instance per episode.

    The skill edits the expert's plan once, before the first step: a wrong approach first (descend beside
    the object, close on nothing, open, rise), a re-grasp after the first grasp, a drop while lifting followed
    by a new pick, pauses between phases, a wrong place to put the object (the one error it does not correct). Every step it slows and perturbs the expert's translation action;
    the expert's feedback (its phases end on the observed state) then corrects what the operator got wrong.
    Every random draw comes from `rng`, so an episode is a function of its reset seed and rng seed.
    """

    def __init__(self, expert, skill, rng):
        self.expert, self.skill, self.rng = expert, skill, rng
        self.noise = np.zeros(3)
        self.events = []  # what this episode's operator did differently ('miss', 'regrasp', 'drop', 'pause')
        expert.replan(self._edit(list(expert.phases)))

    def _edit(self, plan):
        """The expert's plan with this episode's events inserted (all drawn here, in a fixed order)."""
        e, s, rng = self.expert, self.skill, self.rng
        names = [ph.name for ph in plan]
        if rng.random() < s.regrasp:
            i = names.index('close') + 1
            plan[i:i] = e.regrasp_phases()
            self.events.append('regrasp')
        dz = rng.uniform(*e.DROP_DZ)
        if rng.random() < s.drop:
            i = [ph.name for ph in plan].index('up')
            plan[i:i] = e.drop_phases(dz)
            self.events.append('drop')
        angle, dist = rng.uniform(0.0, 2 * np.pi), rng.uniform(*s.miss_offset)
        if rng.random() < s.miss:
            plan[0:0] = e.miss_phases(dist * np.array([np.cos(angle), np.sin(angle)]))
            self.events.append('miss')
        out = [plan[0]]
        for ph in plan[1:]:
            if rng.random() < s.pause:
                out.append(e.pause_phase(int(rng.integers(s.pause_steps[0], s.pause_steps[1] + 1)),
                                         out[-1].gripper))
                self.events.append('pause')
            out.append(ph)
        if s.misplace > 0 and rng.random() < s.misplace:  # drawn last: the other groups' draws are unchanged
            e.misplace()
            self.events.append('misplace')
        return out

    def act(self):
        """Next 7-D action in [-1, 1]: the expert's, slowed and perturbed in translation."""
        action = self.expert.act()
        s = self.skill
        if s.noise > 0:
            white = self.rng.standard_normal(3)
            self.noise = s.noise_corr * self.noise + np.sqrt(1 - s.noise_corr ** 2) * s.noise * white
        # Signal-dependent noise (as in human reaching): large while moving fast, small when fine-positioning,
        # so the noisy operator still converges to the expert's tolerances.
        scale = NOISE_FLOOR + np.linalg.norm(action[:3])
        action[:3] = np.clip(np.clip(action[:3], -s.speed, s.speed) + scale * self.noise, -1.0, 1.0)
        return action

    def finished(self):
        """The expert's plan has run out (see WaypointExpert.finished)."""
        return self.expert.finished()

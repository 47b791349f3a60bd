"""Where robosuite's low-dim observations hold xyzw quaternions (the `quaternions` field of shape_meta).

robosuite's `object-state` (robomimic's `object` key) concatenates, per object, its position, its xyzw
quaternion and, for some tasks, its position and quaternion relative to the gripper. The object quaternion
is reported with either sign on the two sides of w = 0: the Square nut's w stays within 0.1 of 0, and in our
200 scripted Square demos its quaternion jumps to the antipode 1180 times (6 per demo), Can's 47 times, Lift's
never. `annotate_quaternions` marks those dims so the encoders feed rotation-matrix columns instead
(utils/shape_meta.py); the data and the env keep robosuite's raw numbers.
"""

import copy

from utils.shape_meta import low_dim_keys

# env name -> (length of `object`, start indices of its quaternions): robosuite 1.5's object-state layout
OBJECT_QUATERNIONS = {
    'Lift': (10, (3,)),  # cube_pos, cube_quat, gripper_to_cube_pos
    'PickPlaceCan': (14, (3, 10)),  # Can_pos, Can_quat, Can_to_eef_pos, Can_to_eef_quat
    'NutAssemblySquare': (14, (3, 10)),  # SquareNut_pos, _quat, _to_eef_pos, _to_eef_quat
}


def annotate_quaternions(shape_meta: dict, env_name: str | None) -> dict:
    """A copy of shape_meta whose `object` entry lists its quaternions, when the env's layout is known and
    the length matches; otherwise shape_meta unchanged."""
    layout = OBJECT_QUATERNIONS.get(env_name)
    if layout is None or 'object' not in low_dim_keys(shape_meta) \
            or list(shape_meta['obs']['object']['shape']) != [layout[0]]:
        return shape_meta
    out = copy.deepcopy(shape_meta)
    out['obs']['object']['quaternions'] = list(layout[1])
    return out

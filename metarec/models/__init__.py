"""Model name -> class; conf/model/NAME.yaml configures it. Each class builds itself from its config
(from_config) and names the parameter groups an algorithm may adapt (param_groups)."""
from metarec.models.conv4 import Conv4
from metarec.models.mamo import MAMONet
from metarec.models.melu import MeLU
from metarec.models.mlp import MLP

MODELS = {"melu": MeLU, "mlp": MLP, "conv4": Conv4, "mamo": MAMONet}

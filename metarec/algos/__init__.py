"""Algorithm name -> class; conf/algo/NAME.yaml configures metarec/algos/NAME.py."""
from metarec.algos.maml import MAML
from metarec.algos.mamo import MAMO
from metarec.algos.pretrain import Pretrain
from metarec.algos.prompt import Prompt
from metarec.algos.reptile import Reptile
from metarec.algos.ridge import Ridge

ALGOS = {"maml": MAML, "reptile": Reptile, "prompt": Prompt, "ridge": Ridge, "pretrain": Pretrain, "mamo": MAMO}

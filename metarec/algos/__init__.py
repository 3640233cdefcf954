"""Algorithm name -> class; conf/algo/NAME.yaml configures metarec/algos/NAME.py."""
from metarec.algos.lwa import LWA as LWAItems, NLBA as NLBAItems
from metarec.algos.lwa_users import LWA, NLBA
from metarec.algos.maml import MAML
from metarec.algos.metaemb import MetaEmb
from metarec.algos.mwuf import MWUF
from metarec.algos.mamo import MAMO
from metarec.algos.pretrain import Pretrain
from metarec.algos.prompt import Prompt
from metarec.algos.reptile import Reptile
from metarec.algos.ridge import Ridge
from metarec.algos.tanp import TaNP

ALGOS = {"maml": MAML, "reptile": Reptile, "prompt": Prompt, "ridge": Ridge, "pretrain": Pretrain,
         "tanp": TaNP, "metaemb": MetaEmb, "mwuf": MWUF, "mamo": MAMO,
         "lwa": LWA, "nlba": NLBA,  # the paper's, on user tasks (inductive)
         "lwa_items": LWAItems, "nlba_items": NLBAItems}  # their item-task transpose (transductive)

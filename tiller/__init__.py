import time as _time

STARTED = _time.time()  # when this process first imported tiller: the start of a run begun without `tiller run`

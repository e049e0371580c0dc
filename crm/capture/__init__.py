"""Capture: the pure rules that decide what a message means to the CRM (:mod:`.pipeline`), the
path that applies that decision (:mod:`.path`, :mod:`.records`) and the file sources of
``mailcrm capture`` (:mod:`.sources`)."""

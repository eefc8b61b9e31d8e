"""``mahtnet adapt``: a clinic's corrections -> an adapted model folder.

:mod:`mahtnet.adapt.sources` reads the corrections (the review page's ``*.corrected.json``, or
images with ISBI ``x,y`` annotation files) and checks each against the base model;
:mod:`mahtnet.adapt.build` fits the clinic's conventions
(:mod:`mahtnet.decoding.conventions`) and writes the folder, which ``mahtnet predict --model DIR``
and ``mahtnet serve --model DIR`` load like the release.
"""

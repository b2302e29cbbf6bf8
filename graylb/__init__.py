from .propagation.context import GrayContext, gray, current, bind

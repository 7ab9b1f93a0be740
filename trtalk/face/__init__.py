"""trtalk.face"""
